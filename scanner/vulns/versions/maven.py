"""Maven versions, ordered as Maven 3.9's ComparableVersion.

A version splits into items at ``.`` and ``-`` and at every switch between
digits and letters; a ``-`` (or a letter/digit switch) opens a nested list.
Numbers compare numerically; qualifiers compare as
``alpha < beta < milestone < rc = cr < snapshot < "" = ga = final = release < sp``,
and unknown qualifiers after those, alphabetically (case-insensitive). Trailing
zeros and release qualifiers are dropped, so ``1 == 1.0 == 1.0.0 == 1-ga``.

Like Maven's, this order is not transitive for some strings that do not start
with a non-zero number: ``0m0 < 0 < b < 0m0``. Sorting such strings gives an
order that depends on their input order.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

from scanner.vulns.versions._base import InvalidVersion

_QUALIFIERS = ("alpha", "beta", "milestone", "rc", "snapshot", "", "sp")
_ALIASES = {"ga": "", "final": "", "release": "", "cr": "rc"}
_RELEASE_INDEX = str(_QUALIFIERS.index(""))
_SHORT = {"a": "alpha", "b": "beta", "m": "milestone"}


@dataclass(frozen=True)
class _Str:
    value: str


class _List(list):  # holds int, _Str and _List items
    """A (sub-)list of items; a ``-`` starts a new one."""


Item = int | _Str | _List


def _str_item(text: str, followed_by_digit: bool) -> _Str:
    """A qualifier item: ``a1``/``b1``/``m1`` abbreviate alpha, beta, milestone."""
    if followed_by_digit and text in _SHORT:
        text = _SHORT[text]
    return _Str(_ALIASES.get(text, text))


def _comparable_qualifier(q: str) -> str:
    """Known qualifiers by rank, unknown ones after them in lexical order."""
    if q in _QUALIFIERS:
        return str(_QUALIFIERS.index(q))
    return f"{len(_QUALIFIERS)}-{q}"


def _is_null(item: Item) -> bool:
    """Items that normalisation drops at the end of a list: 0, "" and []."""
    if isinstance(item, _Str):
        return _comparable_qualifier(item.value) == _RELEASE_INDEX
    if isinstance(item, _List):
        return len(item) == 0
    return item == 0


def _sign(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def _cmp(item: Item, other: Item | None) -> int:
    """ComparableVersion's Item.compareTo: ``other`` None means "nothing there"."""
    if isinstance(item, _List):
        return _cmp_list(item, other)
    if isinstance(item, _Str):
        if other is None:
            return _sign(_comparable_qualifier(item.value), _RELEASE_INDEX)
        if isinstance(other, _Str):
            return _sign(_comparable_qualifier(item.value), _comparable_qualifier(other.value))
        return -1  # a qualifier sorts below numbers and sub-lists
    if other is None:
        return 0 if item == 0 else 1
    if isinstance(other, int):
        return _sign(item, other)
    return 1  # a number sorts above qualifiers and sub-lists


def _cmp_list(items: _List, other: Item | None) -> int:
    if other is None:
        # Every item counts against nothing, not just the first (Maven's MNG-6964).
        for item in items:
            result = _cmp(item, None)
            if result:
                return result
        return 0
    if isinstance(other, int):
        return -1
    if isinstance(other, _Str):
        return 1
    for left, right in itertools.zip_longest(items, other):
        # A missing item on the left: ask the right one and invert its answer.
        result = -_cmp(right, None) if left is None else _cmp(left, right)
        if result:
            return result
    return 0


def _parse_item(is_digit: bool, text: str) -> Item:
    return int(text) if is_digit else _str_item(text, False)


def _normalize(items: _List) -> None:
    """Drop trailing null items, looking through trailing sub-lists."""
    for i in range(len(items) - 1, -1, -1):
        if _is_null(items[i]):
            del items[i]
        elif not isinstance(items[i], _List):
            break


def parse(version: str) -> _List:
    """Parse ``version`` into ComparableVersion's item tree."""
    if not version:
        raise InvalidVersion("empty Maven version")
    v = version.lower()
    items = current = _List()
    stack = [current]
    is_digit = False
    start = 0
    for i, c in enumerate(v):
        if c in ".-":
            current.append(0 if i == start else _parse_item(is_digit, v[start:i]))
            start = i + 1
            if c == "-":
                current = _push(current, stack)
        elif c.isdecimal():
            if not is_digit and i > start:
                # A qualifier after a dot is treated as after a hyphen: 1.0.0.X1 < 1.0.0-X2.
                if current:
                    current = _push(current, stack)
                current.append(_str_item(v[start:i], True))
                start = i
                current = _push(current, stack)
            is_digit = True
        else:
            if is_digit and i > start:
                current.append(_parse_item(True, v[start:i]))
                start = i
                current = _push(current, stack)
            is_digit = False
    if len(v) > start:
        if not is_digit and current:
            current = _push(current, stack)
        current.append(_parse_item(is_digit, v[start:]))
    for sub in reversed(stack):
        _normalize(sub)
    return items


def _push(current: _List, stack: list[_List]) -> _List:
    """Open a nested list inside ``current``."""
    sub = _List()
    current.append(sub)
    stack.append(sub)
    return sub


@functools.total_ordering
class MavenKey:
    """A sortable parsed Maven version."""

    __slots__ = ("items",)

    def __init__(self, version: str) -> None:
        self.items = parse(version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MavenKey):
            return NotImplemented
        return _cmp_list(self.items, other.items) == 0

    def __lt__(self, other: MavenKey) -> bool:
        return _cmp_list(self.items, other.items) < 0

    __hash__ = None  # type: ignore[assignment]  # equal keys may differ structurally


def key(v: str) -> MavenKey:
    """Return a sortable key for the Maven version ``v``."""
    return MavenKey(v)
