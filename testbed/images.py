"""Build container images in memory and push them through the registry HTTP API v2.

Everything is deterministic: the same files, platform and ``created`` give the same
digests, so a test can predict what the registry will report.  Images come in two
flavours: Docker schema 2 (the default) and OCI (``oci=True``), and multi-platform
images as a Docker manifest list or an OCI image index.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX)
ACCEPT_ALL_MANIFESTS = ", ".join(MANIFEST_TYPES)
"""An ``Accept`` header under which the registry returns any manifest as stored."""

DEFAULT_CREATED = "1970-01-01T00:00:00Z"
_LAYER_TYPES = {
    # (compression, oci) -> media type
    ("gzip", False): DOCKER_LAYER_GZIP,
    ("none", False): DOCKER_LAYER_TAR,
    ("gzip", True): OCI_LAYER_GZIP,
    ("none", True): OCI_LAYER_TAR,
}
_LAYER_COMPRESSION = {media_type: key[0] for key, media_type in _LAYER_TYPES.items()}


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """Content to push as one blob: a layer or an image config."""

    data: bytes = field(repr=False)
    digest: str
    size: int
    media_type: str
    diff_id: str = ""
    """For a layer: digest of the uncompressed tar, as listed in the config's rootfs."""

    @classmethod
    def of(cls, data: bytes, media_type: str, diff_id: str = "") -> Blob:
        return cls(data, sha256_digest(data), len(data), media_type, diff_id)

    def descriptor(self, media_type: str | None = None) -> dict[str, Any]:
        """The descriptor of this blob in a manifest."""
        return {
            "mediaType": media_type or self.media_type,
            "digest": self.digest,
            "size": self.size,
        }


@dataclass
class PushedImage:
    """A single-platform image as it now exists in the registry."""

    repo: str
    tag: str | None
    digest: str
    config_digest: str
    layers: list[Blob]
    manifest: dict[str, Any]
    media_type: str
    platform: str
    """``os/architecture[/variant]``, e.g. ``linux/amd64`` or ``linux/arm64/v8``."""
    config: Blob
    manifest_bytes: bytes = field(repr=False)
    created: str = DEFAULT_CREATED

    @property
    def size(self) -> int:
        """Size of the manifest in bytes, as a manifest list refers to it."""
        return len(self.manifest_bytes)

    @property
    def reference(self) -> str:
        """``repo:tag``, or ``repo@digest`` for an image pushed by digest only."""
        return f"{self.repo}:{self.tag}" if self.tag else f"{self.repo}@{self.digest}"

    def platform_object(self) -> dict[str, str]:
        """The platform object of this image in a manifest list or index."""
        parts = self.platform.split("/")
        platform = {"os": parts[0], "architecture": parts[1]}
        if len(parts) > 2:
            platform["variant"] = parts[2]
        return platform


@dataclass
class PushedIndex:
    """A multi-platform image: a Docker manifest list or an OCI index."""

    repo: str
    tag: str | None
    digest: str
    children: list[PushedImage]
    media_type: str
    manifest: dict[str, Any]
    manifest_bytes: bytes = field(repr=False)


def _tar_info(name: str, *, directory: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed, reproducible tar of ``files`` (path -> content).

    Parent directories are added as needed; a path ending in ``/`` is an empty directory.
    """
    entries: dict[str, bytes | None] = {}
    for raw_path, content in files.items():
        path = raw_path.strip("/")
        if not path:
            raise ValueError(f"invalid path in layer: {raw_path!r}")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            entries.setdefault("/".join(parts[:depth]), None)
        entries[path] = None if raw_path.endswith("/") else bytes(content)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            content = entries[path]
            if content is None:
                tar.addfile(_tar_info(path, directory=True))
            else:
                tar.addfile(
                    _tar_info(path, directory=False, size=len(content)), io.BytesIO(content)
                )
    return buffer.getvalue()


def make_layer(files: Mapping[str, bytes], *, compression: str = "gzip", oci: bool = False) -> Blob:
    """A layer blob holding ``files``; ``compression`` is ``"gzip"`` or ``"none"``.

    The media type is Docker's unless ``oci``; :meth:`Pusher.push_image` translates it to
    the flavour of the manifest it writes anyway.
    """
    if (compression, oci) not in _LAYER_TYPES:
        raise ValueError(f"unsupported compression: {compression!r}")
    tar = make_tar(files)
    data = gzip.compress(tar, compresslevel=6, mtime=0) if compression == "gzip" else tar
    return Blob.of(data, _LAYER_TYPES[compression, oci], diff_id=sha256_digest(tar))


def _timestamp(created: datetime | str | None) -> str:
    if created is None:
        return DEFAULT_CREATED
    if isinstance(created, str):
        return created
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return created.astimezone(UTC).isoformat().replace("+00:00", "Z")


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def make_config(
    layers: Sequence[Blob],
    *,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    created: datetime | str | None = None,
    env: Mapping[str, str] | Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    cmd: Sequence[str] | None = None,
    oci: bool = False,
) -> Blob:
    """The image config blob for ``layers`` (rootfs.diff_ids, one history entry each)."""
    timestamp = _timestamp(created)
    if env is None:
        env_list = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    elif isinstance(env, Mapping):
        env_list = [f"{key}={value}" for key, value in env.items()]
    else:
        env_list = list(env)
    container_config: dict[str, Any] = {"Env": env_list}
    if labels:
        container_config["Labels"] = dict(labels)
    if cmd:
        container_config["Cmd"] = list(cmd)
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os,
        "created": timestamp,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": timestamp, "created_by": f"regscan-tests: layer {index}"}
            for index in range(len(layers))
        ],
    }
    if variant:
        config["variant"] = variant
    return Blob.of(canonical_json(config), OCI_CONFIG if oci else DOCKER_CONFIG)


def platform_string(os: str, architecture: str, variant: str | None = None) -> str:
    """``os/architecture[/variant]``."""
    return "/".join(part for part in (os, architecture, variant) if part)


class RegistryError(RuntimeError):
    """The registry answered a push or delete with an unexpected status."""

    def __init__(self, action: str, response: requests.Response) -> None:
        super().__init__(
            f"{action}: {response.request.method} {response.url} -> "
            f"{response.status_code} {response.text[:500]}"
        )
        self.response = response


class Pusher:
    """Pushes blobs, images and indexes to one registry over its HTTP API v2."""

    def __init__(
        self,
        base_url: str,
        session: requests.Session | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v2/{path}"

    # -- blobs -------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        """True if ``repo`` already has the blob."""
        response = self.session.head(self._url(f"{repo}/blobs/{digest}"), timeout=self.timeout)
        return response.status_code == 200

    def push_blob(self, repo: str, blob: Blob) -> bool:
        """Upload ``blob`` to ``repo`` in one request; False if it was there already."""
        if self.blob_exists(repo, blob.digest):
            return False
        started = self.session.post(self._url(f"{repo}/blobs/uploads/"), timeout=self.timeout)
        if started.status_code != 202 or "Location" not in started.headers:
            raise RegistryError(f"start upload of {blob.digest} to {repo}", started)
        upload_url = _with_query(urljoin(started.url, started.headers["Location"]), blob.digest)
        finished = self.session.put(
            upload_url,
            data=blob.data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=self.timeout,
        )
        if finished.status_code != 201:
            raise RegistryError(f"upload {blob.digest} to {repo}", finished)
        return True

    # -- manifests ---------------------------------------------------------------------
    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; return the digest the registry reports."""
        response = self.session.put(
            self._url(f"{repo}/manifests/{reference}"),
            data=body,
            headers={"Content-Type": media_type},
            timeout=self.timeout,
        )
        if response.status_code != 201:
            raise RegistryError(f"push manifest {repo}:{reference}", response)
        digest = response.headers.get("Docker-Content-Digest", "")
        expected = sha256_digest(body)
        if digest != expected:
            raise AssertionError(f"registry reports digest {digest!r} for a manifest of {expected}")
        return digest

    def get_manifest(
        self, repo: str, reference: str, accept: str = ACCEPT_ALL_MANIFESTS
    ) -> requests.Response:
        """GET a manifest (raises on an error status)."""
        response = self.session.get(
            self._url(f"{repo}/manifests/{reference}"),
            headers={"Accept": accept},
            timeout=self.timeout,
        )
        response.raise_for_status()
        return response

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (this untags every tag pointing at it)."""
        response = self.session.delete(
            self._url(f"{repo}/manifests/{digest}"), timeout=self.timeout
        )
        if response.status_code != 202:
            raise RegistryError(f"delete {repo}@{digest}", response)

    # -- images ------------------------------------------------------------------------
    def push_image(
        self,
        repo: str,
        tag: str | None,
        files_or_layers: Mapping[str, bytes] | Sequence[Blob | Mapping[str, bytes]],
        *,
        created: datetime | str | None = None,
        os: str = "linux",
        architecture: str = "amd64",
        variant: str | None = None,
        oci: bool = False,
        env: Mapping[str, str] | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> PushedImage:
        """Build and push a single-platform image; ``tag=None`` pushes by digest only.

        ``files_or_layers`` is either one layer's files (path -> bytes) or a list whose
        items are layers (:class:`Blob`) or files of a layer each.
        """
        layers = _as_layers(files_or_layers)
        config = make_config(
            layers,
            os=os,
            architecture=architecture,
            variant=variant,
            created=created,
            env=env,
            labels=labels,
            oci=oci,
        )
        for layer in layers:
            self.push_blob(repo, layer)
        self.push_blob(repo, config)
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.descriptor(OCI_CONFIG if oci else DOCKER_CONFIG),
            "layers": [layer.descriptor(_layer_media_type(layer, oci)) for layer in layers],
        }
        body = canonical_json(manifest)
        digest = self.push_manifest(repo, tag or sha256_digest(body), body, media_type)
        return PushedImage(
            repo=repo,
            tag=tag,
            digest=digest,
            config_digest=config.digest,
            layers=layers,
            manifest=manifest,
            media_type=media_type,
            platform=platform_string(os, architecture, variant),
            config=config,
            manifest_bytes=body,
            created=_timestamp(created),
        )

    def push_index(
        self, repo: str, tag: str | None, images: Sequence[PushedImage], *, oci: bool = False
    ) -> PushedIndex:
        """Push a manifest list (or OCI index) of images already pushed to ``repo``."""
        for image in images:
            if image.repo != repo:
                raise ValueError(f"{image.reference} is not in {repo}: push it there first")
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": image.size,
                    "platform": image.platform_object(),
                }
                for image in images
            ],
        }
        body = canonical_json(manifest)
        digest = self.push_manifest(repo, tag or sha256_digest(body), body, media_type)
        return PushedIndex(
            repo=repo,
            tag=tag,
            digest=digest,
            children=list(images),
            media_type=media_type,
            manifest=manifest,
            manifest_bytes=body,
        )

    def push_multiplatform(
        self,
        repo: str,
        tag: str | None,
        files: Mapping[str, bytes],
        platforms: Sequence[str] = ("linux/amd64", "linux/arm64/v8"),
        *,
        created: datetime | str | None = None,
        oci: bool = False,
    ) -> PushedIndex:
        """Push one image per platform (by digest) and an index of them under ``tag``."""
        children = []
        for platform in platforms:
            os, architecture, *variant = platform.split("/")
            children.append(
                self.push_image(
                    repo,
                    None,
                    files,
                    created=created,
                    os=os,
                    architecture=architecture,
                    variant=variant[0] if variant else None,
                    oci=oci,
                )
            )
        return self.push_index(repo, tag, children, oci=oci)


def _layer_media_type(layer: Blob, oci: bool) -> str:
    compression = _LAYER_COMPRESSION.get(layer.media_type)
    if compression is None:  # a media type of the caller's own choosing: keep it
        return layer.media_type
    return _LAYER_TYPES[compression, oci]


def _as_layers(
    files_or_layers: Mapping[str, bytes] | Sequence[Blob | Mapping[str, bytes]],
) -> list[Blob]:
    if isinstance(files_or_layers, Mapping):
        return [make_layer(files_or_layers)]
    return [item if isinstance(item, Blob) else make_layer(item) for item in files_or_layers]


def _with_query(url: str, digest: str) -> str:
    """Add ``digest=`` to an upload URL, keeping the query it already has."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("digest", digest)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def push_many(
    pusher: Pusher,
    n_repos: int,
    tags_per_repo: int,
    *,
    repo_prefix: str = "sweep/app",
    tag_prefix: str = "v",
    created: Callable[[int, int], datetime | str] | None = None,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    step: timedelta = timedelta(minutes=1),
    base_layer: Blob | None = None,
    oci: bool = False,
) -> list[PushedImage]:
    """Push ``n_repos`` x ``tags_per_repo`` distinct images; return them in push order.

    Repositories are named ``{repo_prefix}{i:03d}`` and tags ``{tag_prefix}{j}``.  Every
    image has a layer of its own (so a distinct digest) on top of the optional shared
    ``base_layer``.  Image number ``k`` in push order is created at ``start + k * step``
    unless ``created(repo_index, tag_index)`` says otherwise, so the last pushed image
    is the newest by default.
    """
    images = []
    for repo_index in range(n_repos):
        repo = f"{repo_prefix}{repo_index:03d}"
        for tag_index in range(tags_per_repo):
            number = repo_index * tags_per_repo + tag_index
            tag = f"{tag_prefix}{tag_index}"
            when = created(repo_index, tag_index) if created else start + number * step
            own = make_layer({f"app/{repo}/{tag}.txt": f"{repo}:{tag} #{number}\n".encode()})
            layers = [base_layer, own] if base_layer is not None else [own]
            images.append(pusher.push_image(repo, tag, layers, created=when, oci=oci))
    return images
