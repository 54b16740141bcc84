"""PEP 440 (PyPI) versions, ordered by ``packaging``: the reference implementation."""

from __future__ import annotations

from packaging.version import InvalidVersion as _PackagingInvalid
from packaging.version import Version

from scanner.vulns.versions._base import InvalidVersion


def key(v: str) -> Version:
    """Return a sortable key for the PEP 440 version ``v``."""
    try:
        return Version(v)
    except _PackagingInvalid as exc:
        raise InvalidVersion(f"not a PEP 440 version: {v!r}") from exc
