"""Describe images: resolve a tag or digest to one entry per platform image.

Everything a registry says is checked before use: descriptor digests go into URLs,
so a manifest naming a malformed digest is rejected as ``InvalidManifest``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from core.reference import validate_digest
from scanner.errors import InvalidManifest, NotFound
from scanner.registry.client import RegistryClient
from scanner.registry.manifests import IMAGE_MANIFEST_TYPES, Manifest

Checkpoint = Callable[[], None]
# Docker marks build attestations (SBOM, provenance) in an index this way.
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


@dataclass
class Layer:
    """One layer as the manifest lists it."""

    digest: str
    size: int
    media_type: str


@dataclass
class PlatformImage:
    """One runnable image: a single manifest, possibly reached through an index."""

    digest: str
    media_type: str
    platform: str  # "linux/amd64", "linux/arm64/v8"
    os: str
    architecture: str
    variant: str
    created: datetime | None  # aware, UTC
    size: int  # config + layers, bytes as the manifest says
    layers: list[Layer]
    config_digest: str
    index_digest: str | None  # the index it was reached through


# Describes an image manifest the caller has seen before, from its digest alone.
Known = Callable[[str], PlatformImage | None]


def resolve_image(
    client: RegistryClient,
    repository: str,
    reference: str,
    *,
    checkpoint: Checkpoint | None = None,
    platforms: Collection[str] | None = None,
    known: Known | None = None,
) -> list[PlatformImage]:
    """Resolve a tag or digest to its platform images, in index order.

    ``checkpoint`` is called before every registry request; it may raise ``ScanStopped``.
    ``platforms`` keeps only images whose os[/architecture[/variant]] starts with one
    of the given entries, e.g. ``{"linux"}`` or ``{"linux/arm64"}``; a single image
    whose config names no os is kept.
    ``known`` describes an image manifest from its digest when the caller has seen it
    before (manifests are immutable); its answer is used as is, with ``index_digest``
    set to where it was reached from now, and no config blob is fetched for it.
    """
    step = checkpoint or _no_checkpoint
    lookup = known or _unknown
    step()
    manifest = client.get_manifest(repository, reference)
    if manifest.is_index:
        return _resolve_index(client, repository, manifest, step, platforms, lookup)
    image = lookup(manifest.digest)
    if image is not None:
        image = replace(image, index_digest=None)
    else:
        image = _describe(client, repository, manifest, step, index_digest=None)
    # An image whose config names no os is not refused for it.
    return [image] if not image.os or _wanted(image.platform, platforms) else []


def newest_first(
    client: RegistryClient,
    repository: str,
    tags: Iterable[str],
    *,
    checkpoint: Checkpoint | None = None,
) -> list[tuple[str, datetime | None]]:
    """Tags with their creation time (an index's newest image), newest first.

    Tags without a time come last; ties go by tag name. A tag that is gone or cannot be
    read (``NotFound``, ``InvalidManifest``) counts as undated, so one bad tag does not
    hide the others; every other error, and ``ScanStopped``, propagates.
    """
    dated = [(tag, _tag_created(client, repository, tag, checkpoint)) for tag in tags]
    return sorted(dated, key=_newest_first_key)


def _newest_first_key(item: tuple[str, datetime | None]) -> tuple[bool, float, str]:
    tag, created = item
    return created is None, -created.timestamp() if created else 0.0, tag


def _tag_created(
    client: RegistryClient, repository: str, tag: str, checkpoint: Checkpoint | None
) -> datetime | None:
    try:
        images = resolve_image(client, repository, tag, checkpoint=checkpoint)
    except (NotFound, InvalidManifest):
        return None
    return max((image.created for image in images if image.created), default=None)


def _no_checkpoint() -> None:
    return None


def _unknown(_digest: str) -> PlatformImage | None:
    return None


def _resolve_index(
    client: RegistryClient,
    repository: str,
    index: Manifest,
    step: Checkpoint,
    platforms: Collection[str] | None,
    known: Known,
) -> list[PlatformImage]:
    """One image per child manifest that names a platform, skipping attestations."""
    images = []
    for child in _children(index):
        if not _wanted(_descriptor_platform(child), platforms):
            continue
        digest = _digest(child, index.digest)
        seen = known(digest)
        if seen is not None:
            # The index names the child by digest, so not even its manifest is needed.
            images.append(replace(seen, index_digest=index.digest))
            continue
        step()
        manifest = client.get_manifest(repository, digest)
        if manifest.is_index:
            raise InvalidManifest(f"index {index.digest} nests index {manifest.digest}")
        image = _describe(client, repository, manifest, step, index.digest, child)
        images.append(image)
    return images


def _children(index: Manifest) -> list[dict[str, Any]]:
    """The index's image descriptors that name a real platform."""
    manifests = index.body.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise InvalidManifest(f"index {index.digest} has no valid 'manifests' list")
    return [m for m in manifests if _is_platform_image(m)]


def _is_platform_image(descriptor: dict[str, Any]) -> bool:
    platform = descriptor.get("platform")
    annotations = descriptor.get("annotations")
    if not isinstance(platform, dict) or platform.get("os") in (None, "", "unknown"):
        return False
    if isinstance(annotations, dict) and _ATTESTATION_ANNOTATION in annotations:
        return False
    # Nested indexes and other artifacts are not runnable images of this index.
    return descriptor.get("mediaType") in IMAGE_MANIFEST_TYPES


def _descriptor_platform(descriptor: dict[str, Any]) -> str:
    platform = descriptor.get("platform") or {}
    return _platform_string(
        _text(platform.get("os")),
        _text(platform.get("architecture")),
        _text(platform.get("variant")),
    )


def _describe(
    client: RegistryClient,
    repository: str,
    manifest: Manifest,
    step: Checkpoint,
    index_digest: str | None,
    descriptor: dict[str, Any] | None = None,
) -> PlatformImage:
    """Describe one image manifest from its layers and its config blob."""
    config_descriptor = manifest.body.get("config")
    if not isinstance(config_descriptor, dict):
        raise InvalidManifest(f"manifest {manifest.digest} has no config descriptor")
    layers = _layers(manifest)
    config_digest = _digest(config_descriptor, manifest.digest)
    step()
    config = _config(client.get_blob(repository, config_digest), config_digest)
    fallback = (descriptor or {}).get("platform") or {}
    os_, arch, variant = (
        _text(config.get(key)) or _text(fallback.get(key))
        for key in ("os", "architecture", "variant")
    )
    return PlatformImage(
        digest=manifest.digest,
        media_type=manifest.media_type,
        platform=_platform_string(os_, arch, variant),
        os=os_,
        architecture=arch,
        variant=variant,
        created=parse_created(config.get("created")),
        size=_size(config_descriptor, manifest.digest) + sum(layer.size for layer in layers),
        layers=layers,
        config_digest=config_digest,
        index_digest=index_digest,
    )


def _layers(manifest: Manifest) -> list[Layer]:
    descriptors = manifest.body.get("layers")
    if not isinstance(descriptors, list) or not all(isinstance(d, dict) for d in descriptors):
        raise InvalidManifest(f"manifest {manifest.digest} has no valid 'layers' list")
    return [
        Layer(
            digest=_digest(d, manifest.digest),
            size=_size(d, manifest.digest),
            media_type=_text(d.get("mediaType")),
        )
        for d in descriptors
    ]


def _config(raw: bytes, digest: str) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidManifest(f"config {digest} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidManifest(f"config {digest} is not a JSON object")
    return config


def _digest(descriptor: dict[str, Any], owner: str) -> str:
    """A descriptor's digest, validated because it goes into a URL."""
    digest = descriptor.get("digest")
    try:
        return validate_digest(digest if isinstance(digest, str) else "")
    except ValueError as exc:
        raise InvalidManifest(f"{owner} names an invalid descriptor: {exc}") from exc


def _size(descriptor: dict[str, Any], owner: str) -> int:
    size = descriptor.get("size")
    # bool is an int in Python, but never a size.
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidManifest(f"{owner} names a descriptor with invalid size {size!r}")
    return size


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _platform_string(os_: str, architecture: str, variant: str) -> str:
    return "/".join(part for part in (os_, architecture, variant) if part)


def _wanted(platform: str, platforms: Collection[str] | None) -> bool:
    """True when no filter is set or a filter entry is a leading part of ``platform``."""
    if platforms is None:
        return True
    parts = platform.split("/")
    return any(parts[: len(want.split("/"))] == want.split("/") for want in platforms)


def parse_created(value: object) -> datetime | None:
    """An RFC 3339 time as aware UTC; None when missing, unparseable or Go's zero time.

    A time without an offset is taken as UTC, which is what image builders mean.
    """
    if not isinstance(value, str):
        return None
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    if created.year <= 1:
        return None
    try:
        return created.astimezone(UTC)
    except OverflowError:
        return None
