"""The test support itself, against the real registry, redis-server and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from datetime import datetime

import pytest
import redis
import requests

from testbed.images import (
    ACCEPT_ALL_MANIFESTS,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Pusher,
    make_layer,
    push_many,
)
from testbed.proxy import FaultProxy, ListeningSocket
from testbed.services import RedisServer, RegistryServer, postgres_url


def manifest_of(base_url: str, repo: str, reference: str) -> requests.Response:
    return requests.get(
        f"{base_url}/v2/{repo}/manifests/{reference}",
        headers={"Accept": ACCEPT_ALL_MANIFESTS},
        timeout=10,
    )


# -- images ------------------------------------------------------------------------------


def test_same_files_make_the_same_layer() -> None:
    # Given the same files added in a different order
    first = make_layer({"etc/os-release": b"ID=debian\n", "usr/bin/app": b"\x7fELF"})
    second = make_layer({"usr/bin/app": b"\x7fELF", "etc/os-release": b"ID=debian\n"})
    # Then the layer digests are identical, and other content differs
    assert first.digest == second.digest
    assert first.diff_id == second.diff_id
    assert make_layer({"etc/os-release": b"ID=alpine\n"}).digest != first.digest
    assert first.digest == "sha256:" + hashlib.sha256(first.data).hexdigest()


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_pushed_image_is_served_by_tag_with_its_digest(
    registry: RegistryServer, pusher: Pusher, oci: bool
) -> None:
    # Given an image pushed under a tag
    image = pusher.push_image(
        "library/debian", "oci" if oci else "docker", {"etc/os-release": b"ID=debian\n"}, oci=oci
    )
    # When a client fetches the manifest by tag
    response = manifest_of(registry.url, "library/debian", image.tag or "")
    # Then it gets the digest the push reported, in the pushed format
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
    assert image.platform == "linux/amd64"
    # And its layer and config blobs are downloadable and match their digests
    for descriptor in [response.json()["config"], *response.json()["layers"]]:
        blob = requests.get(
            f"{registry.url}/v2/library/debian/blobs/{descriptor['digest']}", timeout=10
        )
        assert blob.status_code == 200
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]
    config = requests.get(
        f"{registry.url}/v2/library/debian/blobs/{image.config_digest}", timeout=10
    ).json()
    assert config["rootfs"]["diff_ids"] == [image.layers[0].diff_id]


@pytest.mark.parametrize("oci", [False, True], ids=["manifest-list", "oci-index"])
def test_index_lists_two_platforms(registry: RegistryServer, pusher: Pusher, oci: bool) -> None:
    # Given an amd64 and an arm64/v8 image pushed by digest only
    files = {"app/main": b"print('hi')\n"}
    amd64 = pusher.push_image("multi/app", None, files, oci=oci)
    arm64 = pusher.push_image("multi/app", None, files, architecture="arm64", variant="v8", oci=oci)
    # When an index of both is pushed under a tag
    index = pusher.push_index("multi/app", f"multi-{oci}", [amd64, arm64], oci=oci)
    # Then the tag serves the index with both platforms, each child fetchable by digest
    response = manifest_of(registry.url, "multi/app", f"multi-{oci}")
    assert response.headers["Docker-Content-Digest"] == index.digest
    assert response.headers["Content-Type"] == (OCI_INDEX if oci else DOCKER_MANIFEST_LIST)
    platforms = {
        "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
        for p in (entry["platform"] for entry in response.json()["manifests"])
    }
    assert platforms == {"linux/amd64", "linux/arm64/v8"}
    assert amd64.digest != arm64.digest
    for child in (amd64, arm64):
        assert manifest_of(registry.url, "multi/app", child.digest).status_code == 200


def test_catalog_and_tags_show_pushed_repositories(
    registry: RegistryServer, pusher: Pusher
) -> None:
    # Given three repositories with two tags each, pushed oldest first
    images = push_many(pusher, 3, 2, repo_prefix="catalog/app", start=datetime(2024, 5, 1))
    # When the catalog is listed
    catalog = requests.get(f"{registry.url}/v2/_catalog?n=1000", timeout=10).json()
    # Then every repository is there, with its tags, and every image is distinct
    assert {"catalog/app000", "catalog/app001", "catalog/app002"} <= set(catalog["repositories"])
    tags = requests.get(f"{registry.url}/v2/catalog/app001/tags/list", timeout=10).json()
    assert sorted(tags["tags"]) == ["v0", "v1"]
    assert len({image.digest for image in images}) == 6
    assert [image.created for image in images] == sorted(image.created for image in images)
    assert images[-1].created == "2024-05-01T00:05:00Z"


def test_deleted_manifest_is_gone(registry: RegistryServer, pusher: Pusher) -> None:
    # Given a pushed image
    image = pusher.push_image("to/delete", "latest", {"file": b"short-lived"})
    # When its manifest is deleted
    pusher.delete_manifest("to/delete", image.digest)
    # Then neither its tag nor its digest resolves any more
    assert manifest_of(registry.url, "to/delete", "latest").status_code == 404
    assert manifest_of(registry.url, "to/delete", image.digest).status_code == 404


def test_push_follows_relative_upload_locations() -> None:
    # Given a registry that answers with relative Location headers
    with RegistryServer(relative_urls=True) as server:
        started = requests.post(f"{server.url}/v2/rel/blobs/uploads/", timeout=10)
        assert started.headers["Location"].startswith("/v2/rel/blobs/uploads/")
        # When an image is pushed there
        image = Pusher(server.url).push_image("rel", "1", {"file": b"relative"})
        # Then it is served by tag
        assert manifest_of(server.url, "rel", "1").headers["Docker-Content-Digest"] == image.digest


# -- proxy -------------------------------------------------------------------------------


def test_proxy_relays_and_records_over_one_kept_alive_connection(
    proxy: FaultProxy, pusher: Pusher
) -> None:
    # Given an image with a 4 MiB layer in the registry
    big = os.urandom(4 * 1024 * 1024)
    image = pusher.push_image(
        "proxied/big", "1", [make_layer({"big.bin": big}, compression="none")]
    )
    layer = image.layers[0]
    # When a session fetches its manifest and layer through the proxy
    with requests.Session() as session:
        manifest = session.get(
            f"{proxy.url}/v2/proxied/big/manifests/1",
            headers={"Accept": ACCEPT_ALL_MANIFESTS},
            timeout=10,
        )
        blob = session.get(f"{proxy.url}/v2/proxied/big/blobs/{layer.digest}", timeout=30)
        ping = session.get(f"{proxy.url}/v2/", timeout=10)
    # Then the answers are those of the registry, byte for byte
    assert manifest.headers["Docker-Content-Digest"] == image.digest
    assert blob.status_code == 200 and blob.content == layer.data
    assert ping.status_code == 200
    # And every request was recorded, all over a single client connection
    assert proxy.requests == [
        ("GET", "/v2/proxied/big/manifests/1"),
        ("GET", f"/v2/proxied/big/blobs/{layer.digest}"),
        ("GET", "/v2/"),
    ]
    assert proxy.connections == 1
    assert proxy.forwarded == 3


def test_push_through_proxy(proxy: FaultProxy, registry: RegistryServer) -> None:
    # When an image is pushed through the proxy (absolute Locations name the proxy)
    image = Pusher(proxy.url).push_image("via/proxy", "1", {"file": b"proxied push"})
    # Then the registry serves it, and the upload went through the proxy
    assert manifest_of(registry.url, "via/proxy", "1").headers["Docker-Content-Digest"] == (
        image.digest
    )
    assert proxy.count("PUT", "/v2/via/proxy/blobs/uploads/") == 2
    assert proxy.count("PUT", "/v2/via/proxy/manifests/1") == 1


def test_proxy_injects_503_with_retry_after(proxy: FaultProxy) -> None:
    # Given the next two catalog requests are to fail
    proxy.fail_next(2, status=503, retry_after=7, path_prefix="/v2/_catalog")
    with requests.Session() as session:
        # When the catalog is asked for three times, and the base endpoint once
        base = session.get(f"{proxy.url}/v2/", timeout=10)
        answers = [session.get(f"{proxy.url}/v2/_catalog", timeout=10) for _ in range(3)]
    # Then the first two catalog answers are 503 with Retry-After, then the registry answers
    assert base.status_code == 200
    assert [answer.status_code for answer in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[0].json()["errors"][0]["code"] == "UNAVAILABLE"
    assert "repositories" in answers[2].json()
    # And the failed requests never reached the registry
    assert proxy.forwarded == 2
    assert proxy.connections == 1


def test_proxy_delays_matching_requests(proxy: FaultProxy) -> None:
    # Given a delay on the catalog only
    proxy.delay(0.4, path_prefix="/v2/_catalog")
    # When both the catalog and the base endpoint are requested
    started = time.monotonic()
    requests.get(f"{proxy.url}/v2/_catalog", timeout=10).raise_for_status()
    slow = time.monotonic() - started
    started = time.monotonic()
    requests.get(f"{proxy.url}/v2/", timeout=10).raise_for_status()
    fast = time.monotonic() - started
    # Then only the catalog is slow, and it times out a client that waits less
    assert slow >= 0.4
    assert fast < 0.3
    with pytest.raises(requests.Timeout):
        requests.get(f"{proxy.url}/v2/_catalog", timeout=0.1)
    # And after reset nothing is slow
    proxy.reset()
    started = time.monotonic()
    requests.get(f"{proxy.url}/v2/_catalog", timeout=10).raise_for_status()
    assert time.monotonic() - started < 0.3


def test_proxy_drops_connections(proxy: FaultProxy) -> None:
    # Given the next request is to be dropped
    proxy.drop_next(1)
    # When a client asks twice
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{proxy.url}/v2/", timeout=10)
    answer = requests.get(f"{proxy.url}/v2/", timeout=10)
    # Then the first gets no answer at all and the second is served
    assert answer.status_code == 200
    assert proxy.requests == [("GET", "/v2/"), ("GET", "/v2/")]
    assert proxy.forwarded == 1


def test_listening_socket_counts_connections() -> None:
    # Given a port that must never be contacted
    with ListeningSocket() as forbidden:
        assert forbidden.connections == 0
        # When a client tries it anyway
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{forbidden.url}/v2/", timeout=5)
        # Then the attempt is counted
        assert forbidden.connections == 1


# -- other services ----------------------------------------------------------------------


def test_redis_server_answers_and_stops_cleanly() -> None:
    # Given a private redis-server
    server = RedisServer().start()
    process = server.proc
    assert process is not None
    # When a client writes and reads a key
    client = redis.Redis.from_url(server.url)
    client.set("regscan", "ok")
    # Then the value is there, on the server's own port
    assert client.get("regscan") == b"ok"
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client.close()
    # And once stopped the process is reaped, not left as a zombie
    server.stop()
    assert process.returncode is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_postgres_url_connects() -> None:
    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL: set REGSCAN_TEST_POSTGRES_URL or run scripts/test.sh")
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
