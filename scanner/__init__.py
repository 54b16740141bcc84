"""Talk to a Registry HTTP API v2 and describe the images in it.

A plain library: no Celery, database or settings; callers pass everything in.
"""

from core.reference import (
    RegistryAddress,
    image_name,
    parse_registry,
    validate_digest,
    validate_repository,
    validate_tag,
)
from scanner.errors import (
    InvalidManifest,
    NotFound,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailable,
    ScanError,
    ScanStopped,
)
from scanner.images import Layer, PlatformImage, newest_first, resolve_image
from scanner.registry import Manifest, ManifestRef, RegistryClient

__all__ = [
    "InvalidManifest",
    "Layer",
    "Manifest",
    "ManifestRef",
    "NotFound",
    "PlatformImage",
    "RegistryAddress",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryProtocolError",
    "RegistryUnavailable",
    "ScanError",
    "ScanStopped",
    "image_name",
    "newest_first",
    "parse_registry",
    "resolve_image",
    "validate_digest",
    "validate_repository",
    "validate_tag",
]
