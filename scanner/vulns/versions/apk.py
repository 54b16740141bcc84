"""Alpine (apk) versions, ordered as apk-tools' ``apk version -t``.

Grammar: ``digits{.digits}...{letter}{_suffix{digits}}...{~hash}{-r digits}``.
Tokens are compared pairwise while both versions have the same kind of token.
A dotted part with a leading zero compares as a string against its peer, as in
Gentoo. When the kinds first differ (or one version ends), a pre-release
suffix (``_alpha``, ``_beta``, ``_pre``, ``_rc``) sorts lowest; otherwise the
version whose token kind comes later in the grammar (the end being last) is the
smaller one: so ``1.0 < 1.0-r0 < 1.0_p1 < 1.0.1`` and ``1.0_rc1 < 1.0``.
"""

from __future__ import annotations

import re

from scanner.vulns.versions._base import InvalidVersion

# Token kinds, in grammar order: their order decides the comparison tail.
INITIAL, DIGIT, LETTER, SUFFIX, SUFFIX_NO, COMMIT_HASH, REVISION, END = range(8)

# Suffix names by rank; "no suffix" would sit between "rc" and "cvs".
_SUFFIXES = {
    **{"alpha": 0, "beta": 1, "pre": 2, "rc": 3},
    **{"cvs": 5, "svn": 6, "git": 7, "hg": 8, "p": 9},
}
_NO_SUFFIX = 4
# Rank of a pre-release suffix where kinds differ: below every other token.
_PRE_RANK = -100

_FIRST = re.compile(r"[0-9]+")
_NEXT = re.compile(
    r"(?P<letter>[a-z])"
    r"|\.(?P<digit>[0-9]+)"
    r"|_(?P<suffix>[a-z]*)"
    r"|(?P<suffix_no>[0-9]+)"
    r"|~(?P<hash>[0-9A-Fa-f]+)"
    r"|-r(?P<revision>[0-9]+)"
)
# Kinds each kind may be followed by (besides the end).
_FOLLOWS = {
    INITIAL: {LETTER, DIGIT, SUFFIX, COMMIT_HASH, REVISION},
    DIGIT: {LETTER, DIGIT, SUFFIX, COMMIT_HASH, REVISION},
    LETTER: {SUFFIX, COMMIT_HASH, REVISION},
    SUFFIX: {SUFFIX_NO, SUFFIX, COMMIT_HASH, REVISION},
    SUFFIX_NO: {SUFFIX, COMMIT_HASH, REVISION},
    COMMIT_HASH: {REVISION},
    REVISION: set(),
}

Token = tuple[int, object]


def _digits_value(text: str) -> tuple[int, str | int]:
    """A dotted part: with a leading zero it compares as a string, below all numbers."""
    return (0, text) if text.startswith("0") else (1, int(text))


def tokens(v: str) -> list[tuple[int, object]]:
    """Split ``v`` into (kind, value) tokens, raising InvalidVersion where apk would."""
    first = _FIRST.match(v)
    if first is None:
        raise InvalidVersion(f"apk version must start with a digit: {v!r}")
    out: list[tuple[int, object]] = [(INITIAL, int(first.group()))]
    pos = first.end()
    while pos < len(v):
        kind, value, pos = _next_token(v, pos, out[-1][0])
        out.append((kind, value))
    return out


def _next_token(v: str, pos: int, previous: int) -> tuple[int, object, int]:
    """Read the token at ``pos`` that follows a token of kind ``previous``."""
    match = _NEXT.match(v, pos)
    if match is None:
        raise InvalidVersion(f"bad apk version {v!r} at offset {pos}")
    group = match.lastgroup
    kind: int
    value: object
    if group == "letter":
        kind, value = LETTER, match["letter"]
    elif group == "digit":
        kind, value = DIGIT, _digits_value(match["digit"])
    elif group == "suffix":
        if match["suffix"] not in _SUFFIXES:
            raise InvalidVersion(f"unknown suffix in apk version {v!r}")
        kind, value = SUFFIX, _SUFFIXES[match["suffix"]]
    elif group == "suffix_no":
        kind, value = SUFFIX_NO, int(match["suffix_no"])
    elif group == "hash":
        kind, value = COMMIT_HASH, match["hash"]
    else:
        kind, value = REVISION, int(match["revision"])
    if kind not in _FOLLOWS[previous]:
        raise InvalidVersion(f"bad apk version {v!r} at offset {pos}")
    return kind, value, match.end()


def _rank(kind: int, value: object) -> int:
    """Where a token sorts against a token of another kind at the same position."""
    if kind == SUFFIX and isinstance(value, int) and value < _NO_SUFFIX:
        return _PRE_RANK
    return -kind


def key(v: str) -> tuple[tuple[int, object], ...]:
    """Return a sortable key for the apk version ``v``."""
    toks = tokens(v)
    toks.append((END, 0))
    return tuple((_rank(kind, value), value) for kind, value in toks)


def is_valid(v: str) -> bool:
    """Whether apk-tools accepts ``v`` as a version."""
    try:
        tokens(v)
    except InvalidVersion:
        return False
    return True
