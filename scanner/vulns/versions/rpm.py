"""RPM versions (``[epoch:]version[-release]``), ordered as rpm's own comparison.

Each part is compared as rpmvercmp() does: characters other than ASCII letters,
digits, ``~`` and ``^`` only separate segments; ``~`` sorts before everything,
even the end of the string; ``^`` sorts after the end but before any segment;
letter segments sort before digit segments; digit segments compare as numbers.
Epochs, versions and releases compare in turn, as rpm's ``rpm.vercmp()`` does: a
missing epoch counts as 0, and a missing release sorts before any release.
"""

from __future__ import annotations

import re

from scanner.vulns.versions._base import InvalidVersion, sign

# Token ranks, in rpmvercmp's order.
_TILDE, _END, _CARET, _ALPHA, _NUMBER = range(5)
_TOKEN = re.compile(r"~|\^|[A-Za-z]+|[0-9]+")
_EPOCH = re.compile(r"[0-9]*")

Token = tuple[int, int | str]
_END_TOKEN: Token = (_END, 0)


def segments_key(text: str) -> tuple[Token, ...]:
    """Key of one rpmvercmp() operand (an epoch, version or release)."""
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text):
        tok = match.group()
        if tok == "~":
            tokens.append((_TILDE, 0))
        elif tok == "^":
            tokens.append((_CARET, 0))
        elif tok[0].isdigit():
            tokens.append((_NUMBER, int(tok)))
        else:
            tokens.append((_ALPHA, tok))
    tokens.append(_END_TOKEN)
    return tuple(tokens)


def vercmp(a: str, b: str) -> int:
    """rpmvercmp(): compare two version or release strings without epoch splitting."""
    return sign(segments_key(a), segments_key(b))


def parse(v: str) -> tuple[str, str, str | None]:
    """Split ``v`` into (epoch, version, release or None) the way rpm does."""
    if not v:
        raise InvalidVersion("empty rpm version")
    digits = _EPOCH.match(v).group()  # type: ignore[union-attr]  # always matches
    rest = v[len(digits) :]
    if rest.startswith(":"):
        epoch, rest = digits or "0", rest[1:]
    else:
        epoch, rest = "0", v
    # rpm looks for the release hyphen only after the epoch's digits.
    version, hyphen, release = rest.rpartition("-")
    if not hyphen:
        return epoch, rest, None
    return epoch, version, release


def key(v: str) -> tuple[tuple[Token, ...], tuple[Token, ...], tuple[Token, ...]]:
    """Return a sortable key for the rpm EVR ``v``."""
    epoch, version, release = parse(v)
    # The empty tuple sorts before every token list, as a missing release does in rpm.
    rel = () if release is None else segments_key(release)
    return segments_key(epoch), segments_key(version), rel
