"""Exact version ordering for each package ecosystem's version scheme.

``compare(scheme, a, b)`` returns -1, 0 or 1; ``sort_key(scheme, v)`` returns an
object that sorts the same way; ``scheme_for(ecosystem)`` maps an OSV ecosystem
name to its scheme. Each scheme follows its reference tool:

- ``dpkg``: ``dpkg --compare-versions`` (Debian, Ubuntu)
- ``apk``: apk-tools' ``apk version -t`` (Alpine)
- ``rpm``: rpm's EVR comparison (Red Hat, Rocky, AlmaLinux, SUSE, Mageia)
- ``pep440``: the ``packaging`` library (PyPI)
- ``semver``: Semantic Versioning 2.0.0 precedence, as npm's ``semver`` (npm)
- ``go``: Go module versions: semver with an optional leading ``v``
- ``maven``: Maven's ComparableVersion
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from scanner.vulns.versions import apk, dpkg, maven, pep440, rpm, semver
from scanner.vulns.versions._base import InvalidVersion, sign

__all__ = ["SCHEMES", "InvalidVersion", "compare", "scheme_for", "sort_key"]

SCHEMES = ("dpkg", "apk", "rpm", "pep440", "semver", "go", "maven")

_KEY: dict[str, Callable[[str], Any]] = {
    "dpkg": dpkg.key,
    "apk": apk.key,
    "rpm": rpm.key,
    "pep440": pep440.key,
    "semver": semver.key,
    "go": semver.go_key,
    "maven": maven.key,
}

# OSV ecosystem names (the part before the first ":") and their schemes.
_ECOSYSTEMS = {
    "Debian": "dpkg",
    "Ubuntu": "dpkg",
    "Alpine": "apk",
    "Red Hat": "rpm",
    "Rocky Linux": "rpm",
    "AlmaLinux": "rpm",
    "openSUSE": "rpm",
    "SUSE": "rpm",
    "Mageia": "rpm",
    "PyPI": "pep440",
    "npm": "semver",
    "Go": "go",
    "Maven": "maven",
}


def _scheme(scheme: str) -> str:
    if scheme not in _KEY:
        raise ValueError(f"unknown version scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return scheme


def _checked(scheme: str, v: str) -> str:
    if not isinstance(v, str):
        raise InvalidVersion(f"a {scheme} version must be a string, not {type(v).__name__}")
    return v


def compare(scheme: str, a: str, b: str) -> int:
    """Compare versions ``a`` and ``b`` of ``scheme``: -1 if a < b, 0 if equal, 1 if a > b.

    Raises InvalidVersion for a string the scheme cannot parse and ValueError for
    an unknown scheme.
    """
    _scheme(scheme)
    return sign(_key(scheme, _checked(scheme, a)), _key(scheme, _checked(scheme, b)))


def sort_key(scheme: str, v: str) -> Any:
    """Return an object ordering like ``compare`` orders ``v``, for sorting many versions."""
    return _key(_scheme(scheme), _checked(scheme, v))


# Matching compares the same few thousand versions (installed ones and the records'
# events) over and over, across images; parsing them once each is most of the saving.
# Keys are never changed after parsing, so sharing them is safe. A version that does not
# parse raises each time (exceptions are not cached).
@functools.lru_cache(maxsize=65536)
def _key(scheme: str, v: str) -> Any:
    return _KEY[scheme](v)


def scheme_for(ecosystem: str) -> str | None:
    """Return the version scheme of an OSV ecosystem ("Debian:12" -> "dpkg"), or None."""
    return _ECOSYSTEMS.get(ecosystem.split(":", 1)[0].strip())
