"""What a manifest is: the four media types, the fetched forms, and their digests.

A manifest is identified by the sha256 (or sha512) of its exact bytes; the client
checks that digest against the reference it asked for or the registry's
``Docker-Content-Digest`` header, and takes the media type from ``Content-Type`` or,
failing that, from the body, refusing a body that claims another type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from requests.structures import CaseInsensitiveDict

from core.reference import is_digest, validate_digest
from scanner.errors import InvalidManifest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES | INDEX_TYPES
ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as fetched: its verified digest, type, exact bytes and JSON."""

    digest: str
    media_type: str
    raw: bytes
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        """True for a Docker manifest list or an OCI index."""
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class ManifestRef:
    """What a HEAD request says about a manifest, without its body."""

    digest: str
    media_type: str
    size: int


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The ``algorithm:hex`` digest of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raise ``InvalidManifest`` unless ``data`` hashes to ``digest`` (sha256 or sha512)."""
    actual = compute_digest(data, digest.partition(":")[0])
    if actual != digest:
        raise InvalidManifest(f"{what}: digest mismatch: expected {digest}, content is {actual}")


def manifest_digest(raw: bytes, reference: str, header: str | None, what: str) -> str:
    """The manifest's digest, checked against the reference or the registry's header."""
    if is_digest(reference):
        verify_digest(raw, reference, what)
        return reference
    if header and _is_valid_digest(header):
        verify_digest(raw, header, what)
    return compute_digest(raw)


def manifest_media_type(content_type: str, body: dict[str, Any], what: str) -> str:
    """Content-Type when it names a manifest type, else the body's ``mediaType``."""
    declared = content_type.partition(";")[0].strip().lower()
    in_body = body.get("mediaType")
    if declared in MANIFEST_TYPES:
        # A body claiming another type would be read as something it is not.
        if in_body is not None and in_body != declared:
            raise InvalidManifest(f"{what} is served as {declared!r} but says {in_body!r}")
        return declared
    if in_body in MANIFEST_TYPES:
        return str(in_body)
    found = in_body if isinstance(in_body, str) and in_body else declared or "none"
    supported = ", ".join(sorted(MANIFEST_TYPES))
    raise InvalidManifest(f"{what} has unsupported media type {found!r}; supported: {supported}")


def ref_from_headers(headers: CaseInsensitiveDict[str], reference: str) -> ManifestRef | None:
    """A ``ManifestRef`` from HEAD headers, or None when they are missing or suspicious."""
    digest = headers.get("Docker-Content-Digest", "")
    media_type = headers.get("Content-Type", "").partition(";")[0].strip().lower()
    size = headers.get("Content-Length", "")
    if not _is_valid_digest(digest) or media_type not in MANIFEST_TYPES or not size.isdigit():
        return None
    if is_digest(reference) and digest != reference:
        return None
    return ManifestRef(digest=digest, media_type=media_type, size=int(size))


def _is_valid_digest(digest: str) -> bool:
    try:
        validate_digest(digest)
    except ValueError:
        return False
    return True
