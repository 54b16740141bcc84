"""The registry client and image resolution against a real registry.

Faults come from a real proxy in front of it. A few misbehaviours a real registry never
shows (pagination loops, links and redirects to another host) come from a small scripted
HTTP server instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scanner.errors import (
    InvalidManifest,
    NotFound,
    RegistryProtocolError,
    RegistryUnavailable,
    ScanStopped,
)
from scanner.registry.client import RegistryClient
from scanner.registry.images import PlatformImage, newest_first, resolve_image
from scanner.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestRef,
)
from scanner.registry.transport import SessionPool
from testbed.images import (
    Blob,
    PushedImage,
    Pusher,
    canonical_json,
    make_layer,
    push_many,
    sha256_digest,
)
from testbed.proxy import FaultProxy, ListeningSocket
from testbed.services import RegistryServer, free_port

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_client(url: str, **options: Any) -> RegistryClient:
    """A client with small retry pauses so that the tests stay fast."""
    settings: dict[str, Any] = {"retries": 2, "backoff": 0.01, "read_timeout": 5.0}
    return RegistryClient(url, **{**settings, **options})


def blob_file(registry: RegistryServer, digest: str) -> Path:
    """Where the filesystem storage keeps a blob (manifests included)."""
    assert registry.tmpdir is not None
    hex_digest = digest.removeprefix("sha256:")
    blobs = registry.tmpdir / "storage/docker/registry/v2/blobs/sha256"
    return blobs / hex_digest[:2] / hex_digest / "data"


# -- listing ---------------------------------------------------------------------------


def test_clients_of_one_session_pool_reuse_the_registry_connection(
    registry: RegistryServer, pusher: Pusher, name: str
) -> None:
    # Given an image, and the registry behind a proxy that counts client connections
    pusher.push_image(name, "1", {"a": b"1"})
    pool = SessionPool()
    with FaultProxy.for_url(registry.url) as proxy:
        # When two clients, one after the other, fetch its manifest through one pool
        for _ in range(2):
            with RegistryClient(proxy.url, pool=pool) as pooled:
                pooled.get_manifest(name, "1")
        # Then the second used the connection the first left open
        assert (proxy.count("GET"), proxy.connections) == (2, 1)

        # While two clients with sessions of their own open one each
        for _ in range(2):
            with RegistryClient(proxy.url) as own:
                own.get_manifest(name, "1")
        assert (proxy.count("GET"), proxy.connections) == (4, 3)
    pool.close()


def test_ping(client: RegistryClient) -> None:
    client.ping()


def test_ping_of_a_server_that_hangs_up_is_unavailable() -> None:
    with ListeningSocket() as socket, make_client(socket.url, retries=1) as client:
        with pytest.raises(RegistryUnavailable, match=r"registry API v2 at .* unavailable"):
            client.ping()
        assert socket.connections == 2


def test_connection_refused_is_unavailable() -> None:
    with (
        make_client(f"http://127.0.0.1:{free_port()}", retries=1) as client,
        pytest.raises(RegistryUnavailable, match=r"cannot connect.*gave up after 1 retries"),
    ):
        client.get_manifest("app", "1.0")


def test_catalog_follows_links_page_by_page() -> None:
    with RegistryServer() as registry:
        pushed = push_many(Pusher(registry.url), n_repos=7, tags_per_repo=1, repo_prefix="cat/r")
        with FaultProxy("127.0.0.1", registry.port) as proxy, make_client(proxy.url) as client:
            repos = list(client.catalog(page_size=3))
            pages = proxy.requests
    assert repos == sorted(image.repo for image in pushed)
    assert len(pages) == 3
    assert pages[0] == ("GET", "/v2/_catalog?n=3")
    assert all("n=3" in target for _, target in pages)


def test_tags_of_a_repository(client: RegistryClient, pusher: Pusher) -> None:
    push_many(pusher, n_repos=1, tags_per_repo=8, repo_prefix="tags/app")
    # distribution 2.8 ignores n for tags and answers with one page; pagination over
    # Link headers is covered with a scripted server below.
    assert sorted(client.tags("tags/app000", page_size=3)) == [f"v{i}" for i in range(8)]


def test_null_tags_mean_no_tags(client: RegistryClient, pusher: Pusher) -> None:
    image = pusher.push_image("tags/untagged", "1", {"a": b"1"})
    pusher.delete_manifest("tags/untagged", image.digest)
    assert list(client.tags("tags/untagged")) == []


def test_tags_of_unknown_repository_is_not_found(client: RegistryClient) -> None:
    with pytest.raises(NotFound, match=r"^tags of 127\.0\.0\.1:\d+/no/such not found \(404\)$"):
        list(client.tags("no/such"))


def test_invalid_repository_is_rejected_before_any_request(client: RegistryClient) -> None:
    with pytest.raises(ValueError, match="not a valid repository name"):
        client.tags("Bad Repo")


# -- manifests and blobs ---------------------------------------------------------------


@pytest.mark.parametrize(("oci", "media_type"), [(False, DOCKER_MANIFEST), (True, OCI_MANIFEST)])
def test_get_manifest_by_tag_and_digest(
    client: RegistryClient, pusher: Pusher, oci: bool, media_type: str
) -> None:
    image = pusher.push_image(f"manifest/oci-{oci}".lower(), "1.0", {"f": b"x"}, oci=oci)
    by_tag = client.get_manifest(image.repo, "1.0")
    by_digest = client.get_manifest(image.repo, image.digest)
    for manifest in (by_tag, by_digest):
        assert manifest.digest == image.digest
        assert manifest.media_type == media_type
        assert manifest.raw == image.manifest_bytes
        assert manifest.body == image.manifest
        assert not manifest.is_index
    expected = ManifestRef(image.digest, media_type, len(image.manifest_bytes))
    assert client.head_manifest(image.repo, "1.0") == expected


def test_missing_manifest_and_blob_are_not_found(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer
) -> None:
    image = pusher.push_image("missing/app", "1.0", {"f": b"x"})
    with pytest.raises(NotFound) as info:
        client.get_manifest("missing/app", "2.0")
    assert str(info.value) == f"manifest {registry.host}/missing/app:2.0 not found (404)"
    absent = sha256_digest(b"absent")
    with pytest.raises(NotFound, match=rf"^blob {registry.host}/missing/app@{absent} not found"):
        client.get_blob("missing/app", absent)
    with pytest.raises(NotFound):
        client.head_manifest("missing/app", "2.0")
    assert client.get_blob("missing/app", image.config_digest) == image.config.data


def test_manifest_over_the_size_cap_is_refused(registry: RegistryServer, pusher: Pusher) -> None:
    image = pusher.push_image("cap/app", "1.0", {"f": b"x"})
    with make_client(registry.url, max_manifest_bytes=100) as client:
        with pytest.raises(InvalidManifest, match="over the limit of 100"):
            client.get_manifest("cap/app", "1.0")
        with pytest.raises(InvalidManifest, match="over the limit of 10"):
            client.get_blob("cap/app", image.config_digest, max_bytes=10)


def test_tampered_manifest_is_a_digest_mismatch(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer
) -> None:
    # Content of its own: storage is shared by digest, so other tests must not see it.
    image = pusher.push_image("tamper/manifest", "1.0", {"tamper": b"manifest"})
    # Changed on disk behind the registry's back; it serves the stored bytes as they are.
    tampered = json.dumps(image.manifest, indent=1).encode()
    blob_file(registry, image.digest).write_bytes(tampered)
    with pytest.raises(InvalidManifest, match=f"digest mismatch: expected {image.digest}"):
        client.get_manifest("tamper/manifest", image.digest)
    # By tag, the registry's Docker-Content-Digest header is what exposes it.
    with pytest.raises(InvalidManifest, match="digest mismatch"):
        client.get_manifest("tamper/manifest", "1.0")


def test_tampered_config_is_a_digest_mismatch(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer
) -> None:
    image = pusher.push_image("tamper/config", "1.0", {"tamper": b"config"})
    blob_file(registry, image.config_digest).write_bytes(image.config.data.upper())
    with pytest.raises(
        InvalidManifest, match=f"blob .* digest mismatch: expected {image.config_digest}"
    ):
        client.get_blob("tamper/config", image.config_digest)
    with pytest.raises(InvalidManifest, match="digest mismatch"):
        resolve_image(client, "tamper/config", "1.0")


def test_malformed_config_is_invalid(
    client: RegistryClient, pusher: Pusher, registry: RegistryServer
) -> None:
    layer = make_layer({"f": b"x"})
    config = b"{not json"
    pusher.push_blob("bad/config", layer)
    pusher.push_blob("bad/config", Blob.of(config, "application/octet-stream"))
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [layer.descriptor()],
    }
    pusher.push_manifest("bad/config", "1.0", canonical_json(manifest), DOCKER_MANIFEST)
    with pytest.raises(InvalidManifest, match=f"config {sha256_digest(config)} is not valid JSON"):
        resolve_image(client, "bad/config", "1.0")


# -- describing images -----------------------------------------------------------------


@pytest.mark.parametrize("oci", [False, True])
def test_resolve_single_image(client: RegistryClient, pusher: Pusher, oci: bool) -> None:
    image = pusher.push_image(
        f"single/oci-{oci}".lower(),
        "1.0",
        [{"a": b"one"}, {"b": b"two" * 100}],
        created="2024-03-01T12:00:00.123456789Z",
        architecture="arm64",
        variant="v8",
        oci=oci,
    )
    [resolved] = resolve_image(client, image.repo, "1.0")
    assert resolved == PlatformImage(
        digest=image.digest,
        media_type=image.media_type,
        platform="linux/arm64/v8",
        os="linux",
        architecture="arm64",
        variant="v8",
        created=datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        size=image.config.size + sum(layer.size for layer in image.layers),
        layers=resolved.layers,
        config_digest=image.config_digest,
        index_digest=None,
    )
    assert [(layer.digest, layer.size) for layer in resolved.layers] == [
        (layer.digest, layer.size) for layer in image.layers
    ]
    assert {layer.media_type for layer in resolved.layers} == {
        d["mediaType"] for d in image.manifest["layers"]
    }


@pytest.mark.parametrize(("oci", "media_type"), [(False, DOCKER_MANIFEST_LIST), (True, OCI_INDEX)])
def test_resolve_index_gives_one_image_per_platform(
    client: RegistryClient, pusher: Pusher, oci: bool, media_type: str
) -> None:
    repo = f"multi/oci-{oci}".lower()
    children = [
        _push_platform(pusher, repo, "linux/amd64", T0, oci),
        _push_platform(pusher, repo, "linux/arm64/v8", T0, oci),
        _push_platform(pusher, repo, "windows/amd64", T0, oci),
        _push_platform(pusher, repo, "unknown/unknown", T0, oci),  # an attestation
    ]
    index = pusher.push_index(repo, "1.0", children, oci=oci)
    assert client.get_manifest(repo, "1.0").media_type == media_type

    images = resolve_image(client, repo, "1.0")
    assert [i.platform for i in images] == ["linux/amd64", "linux/arm64/v8", "windows/amd64"]
    assert [i.digest for i in images] == [c.digest for c in children[:3]]
    assert {i.index_digest for i in images} == {index.digest}
    assert [i.config_digest for i in images] == [c.config_digest for c in children[:3]]
    assert all(i.created == T0 for i in images)

    linux = resolve_image(client, repo, "1.0", platforms={"linux"})
    assert [i.platform for i in linux] == ["linux/amd64", "linux/arm64/v8"]
    arm = resolve_image(client, repo, index.digest, platforms=["linux/arm64"])
    assert [i.platform for i in arm] == ["linux/arm64/v8"]
    assert resolve_image(client, repo, "1.0", platforms={"linux/s390x"}) == []


def test_index_skips_docker_attestation_manifests(client: RegistryClient, pusher: Pusher) -> None:
    repo = "multi/attested"
    app = _push_platform(pusher, repo, "linux/amd64", T0, oci=True)
    attestation = _push_platform(pusher, repo, "linux/amd64", T0, oci=True)
    descriptors = [
        {"mediaType": OCI_MANIFEST, "digest": app.digest, "size": app.size, "platform": {
            "os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": attestation.digest, "size": attestation.size,
         "platform": {"os": "linux", "architecture": "amd64"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": app.digest}},
    ]  # fmt: skip
    body = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    pusher.push_manifest(repo, "1.0", body, OCI_INDEX)
    assert [i.digest for i in resolve_image(client, repo, "1.0")] == [app.digest]


def test_checkpoint_stops_before_the_next_request(proxy: FaultProxy, pusher: Pusher) -> None:
    repo = "stop/app"
    children = [
        _push_platform(pusher, repo, "linux/amd64", T0, oci=False),
        _push_platform(pusher, repo, "linux/arm64", T0, oci=False),
    ]
    pusher.push_index(repo, "1.0", children)
    calls = 0

    def checkpoint() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # after the index and the first child's manifest
            raise ScanStopped("stop requested")

    with make_client(proxy.url) as client, pytest.raises(ScanStopped):
        resolve_image(client, repo, "1.0", checkpoint=checkpoint)
    assert proxy.requests == [
        ("GET", f"/v2/{repo}/manifests/1.0"),
        ("GET", f"/v2/{repo}/manifests/{children[0].digest}"),
    ]


def test_newest_first(client: RegistryClient, pusher: Pusher) -> None:
    repo = "newest/app"
    for tag, created in [
        ("old", "2023-01-01T00:00:00Z"),
        ("new", "2024-06-01T00:00:00.5Z"),
        ("b-same", "2024-01-01T00:00:00Z"),
        ("a-same", "2024-01-01T00:00:00+00:00"),
        ("undated", "not a time"),
    ]:
        pusher.push_image(repo, tag, {"tag": tag.encode()}, created=created)
    # An index counts as new as its newest image.
    older = _push_platform(pusher, repo, "linux/amd64", datetime(2022, 1, 1, tzinfo=UTC), False)
    newer = _push_platform(pusher, repo, "linux/arm64", datetime(2025, 1, 1, tzinfo=UTC), False)
    pusher.push_index(repo, "multi", [older, newer])

    tags = ["old", "undated", "gone", "a-same", "multi", "new", "b-same"]
    assert newest_first(client, repo, tags) == [
        ("multi", datetime(2025, 1, 1, tzinfo=UTC)),
        ("new", datetime(2024, 6, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("a-same", datetime(2024, 1, 1, tzinfo=UTC)),
        ("b-same", datetime(2024, 1, 1, tzinfo=UTC)),
        ("old", datetime(2023, 1, 1, tzinfo=UTC)),
        ("gone", None),
        ("undated", None),
    ]


def _push_platform(
    pusher: Pusher, repo: str, platform: str, created: datetime, oci: bool
) -> PushedImage:
    os_, architecture, *variant = platform.split("/")
    return pusher.push_image(
        repo,
        None,
        {"platform": platform.encode(), "created": created.isoformat().encode()},
        created=created,
        os=os_,
        architecture=architecture,
        variant=variant[0] if variant else None,
        oci=oci,
    )


# -- retries ---------------------------------------------------------------------------


def test_503_with_retry_after_is_retried_after_waiting(proxy: FaultProxy, pusher: Pusher) -> None:
    image = pusher.push_image("retry/after", "1.0", {"f": b"x"})
    path = "/v2/retry/after/manifests/"
    proxy.fail_next(2, status=503, retry_after=1, path_prefix=path)
    with make_client(proxy.url, retries=3) as client:
        started = time.monotonic()
        manifest = client.get_manifest("retry/after", "1.0")
        elapsed = time.monotonic() - started
    assert manifest.digest == image.digest
    assert proxy.count("GET", path) == 3
    assert elapsed >= 1.8


def test_retry_after_is_capped_by_backoff_max(proxy: FaultProxy, pusher: Pusher) -> None:
    pusher.push_image("retry/capped", "1.0", {"f": b"x"})
    proxy.fail_next(1, status=429, retry_after=3600, path_prefix="/v2/retry/capped/")
    with make_client(proxy.url, backoff_max=0.2) as client:
        started = time.monotonic()
        client.get_manifest("retry/capped", "1.0")
        assert time.monotonic() - started < 2


def test_exhausted_retries_are_unavailable(proxy: FaultProxy, pusher: Pusher) -> None:
    pusher.push_image("retry/exhausted", "1.0", {"f": b"x"})
    path = "/v2/retry/exhausted/manifests/"
    proxy.fail_next(10, status=502, path_prefix=path)
    with make_client(proxy.url, retries=2) as client, pytest.raises(RegistryUnavailable) as info:
        client.get_manifest("retry/exhausted", "1.0")
    assert str(info.value) == (
        f"manifest {proxy.host}/retry/exhausted:1.0 unavailable: "
        "registry answered 502 (gave up after 2 retries)"
    )
    assert not info.value.permanent
    assert proxy.count("GET", path) == 3


def test_dropped_connection_is_retried(proxy: FaultProxy, pusher: Pusher) -> None:
    image = pusher.push_image("retry/dropped", "1.0", {"f": b"x"})
    path = "/v2/retry/dropped/"
    proxy.drop_next(1, path_prefix=f"{path}manifests/")
    proxy.drop_next(1, path_prefix=f"{path}blobs/")
    with make_client(proxy.url) as client:
        [resolved] = resolve_image(client, "retry/dropped", "1.0")
    assert resolved.digest == image.digest
    assert proxy.count("GET", path) == 4  # manifest and config, each dropped once


def test_read_timeout_is_unavailable(proxy: FaultProxy, pusher: Pusher) -> None:
    pusher.push_image("retry/slow", "1.0", {"f": b"x"})
    proxy.delay(3, path_prefix="/v2/retry/slow/")
    with make_client(proxy.url, retries=1, read_timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(
            RegistryUnavailable, match=r"read timed out \(gave up after 1 retries\)"
        ):
            client.get_manifest("retry/slow", "1.0")
        assert time.monotonic() - started < 2.5
    assert proxy.count("GET", "/v2/retry/slow/") == 2


def test_a_manifest_and_config_cut_short_after_their_headers_are_fetched_again(
    proxy: FaultProxy, pusher: Pusher
) -> None:
    # Given a registry whose first answers for the manifest and the config break off
    image = pusher.push_image("retry/cut", "1.0", {"f": b"x"})
    path = "/v2/retry/cut/"
    proxy.cut_next(1, path_prefix=f"{path}manifests/", after=10)
    proxy.cut_next(1, path_prefix=f"{path}blobs/", after=10)

    # Then each is asked for again, and the image resolves as it is
    with make_client(proxy.url, retries=1) as client:
        [resolved] = resolve_image(client, "retry/cut", "1.0")
    assert resolved.digest == image.digest
    assert proxy.count("GET", path) == 4


def test_a_manifest_stalled_past_the_read_timeout_after_its_headers_is_fetched_again(
    proxy: FaultProxy, pusher: Pusher
) -> None:
    image = pusher.push_image("retry/stall", "1.0", {"f": b"x"})
    path = "/v2/retry/stall/manifests/"
    proxy.cut_next(1, path_prefix=path, after=10, stall=2)
    with make_client(proxy.url, retries=1, read_timeout=0.3) as client:
        assert client.get_manifest("retry/stall", "1.0").digest == image.digest
    assert proxy.count("GET", path) == 2


# -- what a real registry never does ---------------------------------------------------


class _Scripted:
    """A tiny HTTP server answering from a script: path -> (status, headers, body).

    It records each request's path and Authorization header.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = server.routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[], _Scripted]]:
    servers: list[_Scripted] = []

    def start() -> _Scripted:
        servers.append(_Scripted())
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _tags_page(tags: list[str], link: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if link:
        headers["Link"] = f'<{link}>; rel="next"'
    return 200, headers, json.dumps({"name": "app", "tags": tags}).encode()


def test_tags_follow_relative_and_absolute_links(scripted: Callable[[], _Scripted]) -> None:
    server = scripted()
    server.routes = {
        "/v2/app/tags/list?n=2": _tags_page(["a", "b"], "/v2/app/tags/list?last=b&n=2"),
        "/v2/app/tags/list?last=b&n=2": _tags_page(
            ["c", "not a tag!", "sha256:" + "0" * 64, "d"],
            f"{server.url}/v2/app/tags/list?last=d&n=2",
        ),
        "/v2/app/tags/list?last=d&n=2": _tags_page(["e"]),
    }
    with make_client(server.url) as client:
        assert list(client.tags("app", page_size=2)) == ["a", "b", "c", "d", "e"]


def test_pagination_loop_is_a_protocol_error(scripted: Callable[[], _Scripted]) -> None:
    server = scripted()
    server.routes = {
        "/v2/app/tags/list?n=2": _tags_page(["a", "b"], "/v2/app/tags/list?last=b&n=2"),
        "/v2/app/tags/list?last=b&n=2": _tags_page(["c"], "/v2/app/tags/list?n=2"),
    }
    with make_client(server.url) as client, pytest.raises(RegistryProtocolError, match="loops"):
        list(client.tags("app", page_size=2))


def test_link_to_another_host_is_not_followed(scripted: Callable[[], _Scripted]) -> None:
    server, elsewhere = scripted(), scripted()
    elsewhere.routes = {"/v2/app/tags/list?last=b": _tags_page(["c"])}
    server.routes = {
        "/v2/app/tags/list?n=2": _tags_page(["a", "b"], f"{elsewhere.url}/v2/app/tags/list?last=b")
    }
    with (
        make_client(server.url, auth=("user", "secret")) as client,
        pytest.raises(RegistryProtocolError, match="on another host"),
    ):
        list(client.tags("app", page_size=2))
    assert elsewhere.seen == []


def test_blob_redirect_to_another_host_gets_no_credentials(
    scripted: Callable[[], _Scripted],
) -> None:
    registry, storage = scripted(), scripted()
    storage.url = storage.url.replace("127.0.0.1", "localhost")
    config = b'{"os": "linux"}'
    digest = sha256_digest(config)
    storage.routes = {"/blob": (200, {}, config)}
    registry.routes = {f"/v2/app/blobs/{digest}": (307, {"Location": f"{storage.url}/blob"}, b"")}
    with make_client(registry.url, auth=("user", "secret")) as client:
        assert client.get_blob("app", digest) == config
    [(_, registry_auth)] = registry.seen
    assert registry_auth is not None and registry_auth.startswith("Basic ")
    assert storage.seen == [("/blob", None)]


def test_unsupported_media_type_is_invalid(scripted: Callable[[], _Scripted]) -> None:
    server = scripted()
    schema1 = json.dumps({"schemaVersion": 1, "name": "app", "tag": "1.0"}).encode()
    server.routes = {
        "/v2/app/manifests/1.0": (
            200,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
            schema1,
        )
    }
    with make_client(server.url) as client, pytest.raises(InvalidManifest) as info:
        client.get_manifest("app", "1.0")
    message = str(info.value)
    assert "unsupported media type 'application/vnd.docker.distribution.manifest.v1+prettyjws'" in (
        message
    )
    assert message.startswith(f"manifest {server.url.removeprefix('http://')}/app:1.0 has ")
    assert OCI_INDEX in message and DOCKER_MANIFEST in message


def test_body_contradicting_its_content_type_is_invalid(scripted: Callable[[], _Scripted]) -> None:
    server = scripted()
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    server.routes = {"/v2/app/manifests/1.0": (200, {"Content-Type": OCI_MANIFEST}, index)}
    with make_client(server.url) as client, pytest.raises(InvalidManifest, match="but says"):
        client.get_manifest("app", "1.0")
