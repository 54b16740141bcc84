"""Errors raised while talking to a registry, describing an image or reading its layers.

Shared by the three libraries of ``scanner``.

Every error says whether it is ``permanent``: a permanent error is a fact about the
image or the registry's answer (recorded, not retried); a transient one may go away
if the same work is tried again later.
"""

from __future__ import annotations


class ScanError(Exception):
    """Base of all scanner errors; ``permanent`` tells the caller whether to retry."""

    permanent: bool = True


class RegistryUnavailable(ScanError):
    """The registry could not be reached or kept failing (timeouts, resets, 429/5xx)."""

    permanent = False


class BodyInterrupted(RegistryUnavailable):
    """An answer broke off after its headers: the body was cut short, or stalled past the
    read timeout. The request is made again from the start, like any transient fault."""


class RegistryAuthError(ScanError):
    """The registry refused our credentials or denied access (401/403)."""


class NotFound(ScanError):
    """The manifest, blob or repository does not exist (404)."""


class InvalidManifest(ScanError):
    """A manifest or config we cannot accept: unknown type, bad JSON, wrong digest, too big."""


class RegistryProtocolError(ScanError):
    """The registry answered outside the API: an unexpected status or a pagination loop.

    Permanent because asking the same registry again gives the same answer; the next
    scheduled scan tries again anyway.
    """


class ScanStopped(ScanError):
    """Raised by a checkpoint callback to stop work; says nothing about the image."""

    permanent = False


class InvalidContent(ScanError):
    """A layer or a file inside it we cannot accept: corrupt or truncated streams,
    unsafe paths or file types, too many expanded bytes, malformed package data."""
