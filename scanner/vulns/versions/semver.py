"""Semantic Versioning 2.0.0 precedence, for npm (``semver``) and Go modules (``go``).

Precedence compares major, minor and patch numerically; a version with a
pre-release sorts before the same version without one; pre-release identifiers
compare one by one, numeric ones as numbers and below alphanumeric ones, which
compare in ASCII order; a shorter identifier list sorts first when it is a prefix.
Build metadata never counts.
"""

from __future__ import annotations

import re

from scanner.vulns.versions._base import InvalidVersion

_NUM = r"0|[1-9][0-9]*"
_IDENT = r"[0-9A-Za-z-]+"
_SEMVER = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    rf"(?:\+(?P<build>{_IDENT}(?:\.{_IDENT})*))?"
)
# Go also accepts "v1" and "v1.2" (meaning v1.0.0 and v1.2.0), without suffixes.
_GO_SHORT = re.compile(rf"(?P<major>{_NUM})(?:\.(?P<minor>{_NUM}))?")

# A pre-release identifier's key: numbers (rank 0) sort before words (rank 1).
Ident = tuple[int, int | str]
# Key of "no pre-release": above every pre-release list.
_RELEASE: tuple[Ident, ...] = ((2, 0),)


def _pre_key(pre: str | None, v: str) -> tuple[Ident, ...]:
    """Key of a dot-separated pre-release, or of its absence."""
    if pre is None:
        return _RELEASE
    idents: list[Ident] = []
    for ident in pre.split("."):
        if ident.isdigit():
            if len(ident) > 1 and ident[0] == "0":
                raise InvalidVersion(f"numeric pre-release identifier with a leading zero: {v!r}")
            idents.append((0, int(ident)))
        else:
            idents.append((1, ident))
    return tuple(idents)


def _key(core: str, v: str, short: bool = False) -> tuple[int, int, int, tuple[Ident, ...]]:
    """Key of a version already stripped of its prefix."""
    match = _SEMVER.fullmatch(core)
    if match is None and short:
        short_match = _GO_SHORT.fullmatch(core)
        if short_match is not None:
            return int(short_match["major"]), int(short_match["minor"] or 0), 0, _RELEASE
    if match is None:
        raise InvalidVersion(f"not a semantic version: {v!r}")
    pre = _pre_key(match["pre"], v)
    return int(match["major"]), int(match["minor"]), int(match["patch"]), pre


def key(v: str) -> tuple[int, int, int, tuple[Ident, ...]]:
    """Return a sortable key for an npm version (a leading "=" and "v" are tolerated)."""
    return _key(v.strip().removeprefix("=").removeprefix("v"), v)


def go_key(v: str) -> tuple[int, int, int, tuple[Ident, ...]]:
    """Return a sortable key for a Go module version ("v" optional, as OSV omits it).

    Pseudo-versions are ordinary pre-releases and ``+incompatible`` is build
    metadata, so both order as Go orders them.
    """
    return _key(v.removeprefix("v"), v, short=True)
