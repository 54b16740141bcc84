"""OSV ranges: whether a version is in one, and the version that fixes it.

Evaluated exactly as the OSV schema's evaluation section describes: events sorted by
the ecosystem's own version ordering, ``introduced``, exclusive ``fixed``, inclusive
``last_affected`` and ``limit``. A version the comparator cannot read raises
``InvalidVersion``; the matcher skips that range and counts it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from scanner.vulns.osv import Event, Range
from scanner.vulns.versions import compare, scheme_for

# Ecosystems the comparators' own table leaves out, by the packaging they use.
EXTRA_SCHEMES = {"Wolfi": "apk", "Chainguard": "apk", "Photon OS": "rpm"}


@functools.lru_cache(maxsize=256)
def scheme_of(ecosystem: str) -> str | None:
    """The version scheme of an OSV ecosystem, the ones ``EXTRA_SCHEMES`` adds included."""
    return scheme_for(ecosystem) or EXTRA_SCHEMES.get(ecosystem.split(":", 1)[0])


def in_range(rng: Range, version: str, scheme: str) -> tuple[bool, str | None]:
    """Whether ``version`` is in the range, and the version that fixes it if any.

    Raises ``InvalidVersion`` when a version cannot be compared under ``scheme``.
    """
    events = sorted(rng.events, key=functools.cmp_to_key(_event_cmp(scheme)))
    limits = [e.version for e in events if e.kind == "limit"]
    if limits and not any(_below_limit(version, limit, scheme) for limit in limits):
        return False, None
    affected = False
    for e in events:
        affected = _state_after(e, version, scheme, affected)
    if not affected:
        return False, None
    fixes = (e.version for e in events if e.kind == "fixed")
    return True, next((f for f in fixes if compare(scheme, version, f) < 0), None)


def _state_after(e: Event, version: str, scheme: str, affected: bool) -> bool:
    """The walk's state once it has passed event ``e`` (events in ascending order)."""
    if e.kind == "introduced" and (e.version == "0" or compare(scheme, version, e.version) >= 0):
        return True
    if e.kind == "fixed" and compare(scheme, version, e.version) >= 0:
        return False
    if e.kind == "last_affected" and compare(scheme, version, e.version) > 0:
        return False
    return affected


def _below_limit(version: str, limit: str, scheme: str) -> bool:
    return "*" in limit or compare(scheme, version, limit) < 0


def _event_cmp(scheme: str) -> Callable[[Event, Event], int]:
    def cmp(a: Event, b: Event) -> int:
        ends = _position(a), _position(b)
        return ends[0] - ends[1] if any(ends) else compare(scheme, a.version, b.version)

    return cmp


def _position(event: Event) -> int:
    """Events that sort at an end whatever the scheme: introduced "0", limit "*"."""
    if event.kind == "introduced" and event.version == "0":
        return -1
    if event.kind == "limit" and "*" in event.version:
        return 1
    return 0
