"""What every version scheme shares: the error type and the sign helper."""

from __future__ import annotations

from typing import Any


class InvalidVersion(ValueError):
    """A version string that its scheme cannot parse."""


def sign(a: Any, b: Any) -> int:
    """Return -1, 0 or 1 as ``a`` is less than, equal to or greater than ``b``."""
    return (a > b) - (a < b)
