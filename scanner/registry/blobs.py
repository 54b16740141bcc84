"""The verified reader of a layer blob, streamed as the registry stores it.

A layer is never held whole: its bytes are hashed as they are read and checked
against the digest and the size the manifest gave when the stream ends, so only a
blob read to its end counts as verified.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import requests
from urllib3.exceptions import HTTPError

from scanner.errors import BodyInterrupted, InvalidContent
from scanner.registry.transport import describe


class VerifiedBlob(io.RawIOBase):
    """A blob's body as the registry sends it, hashed as it is read and checked at EOF."""

    def __init__(
        self, response: requests.Response, digest: str, size: int | None, what: str
    ) -> None:
        super().__init__()
        self._raw = response.raw
        self._digest = digest
        self._hash = hashlib.new(digest.partition(":")[0])
        self._size = size
        self._what = what
        self._count = 0
        self._eof = False
        self._error: InvalidContent | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with the next bytes; 0 at the end, once they are verified."""
        if self._error is not None:
            raise self._error  # a caller that swallowed it must not see a clean end
        if self._eof:
            return 0
        wanted = len(buffer)
        if self._size is not None:
            # One byte past the size is enough to tell the registry sent too much.
            wanted = min(wanted, self._size - self._count + 1)
        data = self._read(wanted)
        if not data:
            self._eof = True
            self._check(self._verify())
            return 0
        self._count += len(data)
        if self._size is not None and self._count > self._size:
            self._check(
                f"layer {self._digest}: manifest says {self._size} bytes, registry sent more"
            )
        self._hash.update(data)
        buffer[: len(data)] = data
        return len(data)

    def _read(self, amount: int) -> bytes:
        try:
            return self._raw.read(amount, decode_content=False)
        except (HTTPError, OSError) as exc:
            raise BodyInterrupted(f"{self._what} unavailable: {describe(exc)}") from exc

    def _verify(self) -> str:
        """Why the bytes read are not the blob, or "" when they are."""
        if self._size is not None and self._count != self._size:
            return (
                f"layer {self._digest}: manifest says {self._size} bytes, "
                f"registry sent {self._count}"
            )
        actual = f"{self._digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if actual != self._digest:
            return f"layer {self._digest} digest mismatch: content is {actual}"
        return ""

    def _check(self, problem: str) -> None:
        if problem:
            self._error = InvalidContent(problem)
            raise self._error
