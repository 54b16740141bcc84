"""Debian (dpkg) versions, ordered exactly as ``dpkg --compare-versions``.

A version is ``[epoch:]upstream[-revision]``; the revision starts after the last
hyphen. Upstream and revision are compared by alternating runs of non-digits and
digits: in a non-digit run ``~`` sorts before the end of the run, the end before
letters and letters before every other character; digit runs compare as numbers.
"""

from __future__ import annotations

from scanner.vulns.versions._base import InvalidVersion

_BLANKS = " \t"
_EPOCH_MAX = 2**31 - 1  # dpkg keeps the epoch in a C int

# A run part's key: (orders of its non-digit characters + (0,), value of its digits).
Part = tuple[tuple[int, ...], int]
# The part an exhausted string keeps comparing as: no non-digits, the number 0.
_ZERO: Part = ((0,), 0)


def _order(byte: int) -> int:
    """Weight of one byte in a non-digit run; the end of the run weighs 0."""
    if 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A:
        return byte
    if byte == 0x7E:  # "~"
        return -1
    # dpkg reads a signed char: bytes above 127 wrap below 0 before it adds 256.
    return byte if byte > 0x7F else byte + 256


def _fragment_key(text: str) -> tuple[Part, ...]:
    """Key of an upstream version or revision, as dpkg's verrevcmp walks it."""
    data = text.encode("utf-8", "surrogateescape")
    parts: list[Part] = []
    i, n = 0, len(data)
    while True:
        start = i
        while i < n and not 0x30 <= data[i] <= 0x39:
            i += 1
        orders = (*(_order(b) for b in data[start:i]), 0)
        start = i
        while i < n and 0x30 <= data[i] <= 0x39:
            i += 1
        parts.append((orders, int(data[start:i] or b"0")))
        if i >= n:
            break
    # Trailing zero parts change nothing (an exhausted string compares as zero parts); the
    # first part is kept so a zero part can only ever be the first one, and the closing
    # zero part then stands for the endless zeros of an exhausted string.
    while len(parts) > 1 and parts[-1] == _ZERO:
        parts.pop()
    parts.append(_ZERO)
    return tuple(parts)


def parse(v: str) -> tuple[int, str, str]:
    """Split ``v`` into (epoch, upstream, revision), rejecting what dpkg rejects."""
    s = v.strip(_BLANKS)
    if not s:
        raise InvalidVersion("empty dpkg version")
    if any(c in _BLANKS for c in s):
        raise InvalidVersion(f"dpkg version has embedded spaces: {v!r}")
    epoch = 0
    if ":" in s:
        head, s = s.split(":", 1)
        epoch = _parse_epoch(head, v)
        if not s:
            raise InvalidVersion(f"nothing after the colon in dpkg version {v!r}")
    upstream, hyphen, revision = s.rpartition("-")
    if not hyphen:
        upstream, revision = s, ""
    elif not revision:
        raise InvalidVersion(f"empty revision in dpkg version {v!r}")
    if not upstream:
        raise InvalidVersion(f"empty upstream version in dpkg version {v!r}")
    return epoch, upstream, revision


def _parse_epoch(head: str, v: str) -> int:
    """Parse the epoch the way dpkg's strtol() call accepts it."""
    digits = head[1:] if head[:1] in ("+", "-") else head
    if not digits:
        raise InvalidVersion(f"empty epoch in dpkg version {v!r}")
    if not digits.isascii() or not digits.isdigit():
        raise InvalidVersion(f"epoch is not a number in dpkg version {v!r}")
    epoch = -int(digits) if head[0] == "-" else int(digits)
    if epoch < 0:
        raise InvalidVersion(f"negative epoch in dpkg version {v!r}")
    if epoch > _EPOCH_MAX:
        raise InvalidVersion(f"epoch too big in dpkg version {v!r}")
    return epoch


def key(v: str) -> tuple[int, tuple[Part, ...], tuple[Part, ...]]:
    """Return a sortable key for the dpkg version ``v``."""
    epoch, upstream, revision = parse(v)
    return epoch, _fragment_key(upstream), _fragment_key(revision)
