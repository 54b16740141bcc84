"""The decompressors a layer's tar stream comes out of: gzip members inflated one after
another by the zlib implementation installed, and a zstd stream's frames followed as its
bytes pass on to the decoder (which takes a truncated stream for a short one).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from scanner.errors import InvalidContent

log = logging.getLogger(__name__)

CHUNK = 64 << 10
# Compressed bytes given to the inflater at a time: small, so that a decompression
# bomb is refused having read little of it, whatever it expands to.
INPUT_BYTES = 16 << 10
_GZIP_WBITS = 31  # zlib's way of saying: a gzip header and trailer, both checked


class Readable(Protocol):
    """Anything to read bytes from: a blob, a decompressor, a stream put together."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Inflater:
    """A zlib implementation: how to start inflating, and what it raises."""

    name: str
    start: Callable[[], Any]  # a decompress object, as zlib.decompressobj makes
    error: type[Exception]


def _inflaters() -> dict[str, Inflater]:
    """The zlib implementations installed, the default first (``bench/analyse.py``)."""
    found: dict[str, Inflater] = {}
    try:
        from zlib_ng import zlib_ng

        found["zlib-ng"] = Inflater(
            "zlib-ng", lambda: zlib_ng.decompressobj(_GZIP_WBITS), _error_class(zlib_ng.error)
        )
    except ImportError:  # no wheel for this platform: the standard library's zlib
        log.info("zlib-ng is not installed; gzip layers are inflated by zlib")
    try:
        from isal import isal_zlib

        found["isal"] = Inflater(
            "isal", lambda: isal_zlib.decompressobj(_GZIP_WBITS), _error_class(isal_zlib.error)
        )
    except ImportError:  # only the benchmarks install it, to compare
        pass
    found["zlib"] = Inflater("zlib", lambda: zlib.decompressobj(_GZIP_WBITS), zlib.error)
    return found


def _error_class(error: object) -> type[Exception]:
    # Both packages' type stubs call their error class an instance.
    return cast(type[Exception], error)


INFLATERS = _inflaters()
INFLATER = next(iter(INFLATERS))
"""The name of the zlib implementation gzip layers are inflated with by default."""


class GzipMembers:
    """A gzip stream inflated member after member, as ``gzip -d`` reads one.

    RFC 1952 lets a stream hold several members, and zero bytes may pad the end. The
    inflater checks each member's header, CRC and length. It is given at most
    ``INPUT_BYTES`` at a time and asked for at most what the caller wants, so neither
    side of it grows with what a member expands to.
    """

    def __init__(self, source: Readable, inflater: Inflater) -> None:
        self._source = source
        self._inflater = inflater
        self._member = inflater.start()
        self._input = b""  # compressed bytes read, not yet given to an inflater
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); b"" at the end."""
        size = CHUNK if size is None or size < 0 else size
        parts = []
        while size > 0 and not self._ended:
            part = self._inflate(size)
            parts.append(part)
            size -= len(part)
        return b"".join(parts)

    def _inflate(self, size: int) -> bytes:
        """One step of the inflater: up to ``size`` bytes, maybe none yet."""
        if self._member.eof:
            self._next_member()
            return b""
        data = self._member.unconsumed_tail or self._take_input()
        # Called with no input at the end too: an inflater may hold output back.
        out: bytes = self._member.decompress(data, size)
        if not out and not data and not self._member.eof:
            raise EOFError("compressed stream ended before the end of its last member")
        return out

    def _take_input(self) -> bytes:
        data, self._input = self._input, b""
        return data or self._source.read(INPUT_BYTES)

    def _next_member(self) -> None:
        """Start the member after this one, or end where only zero bytes follow."""
        rest: bytes = self._member.unused_data
        while not (rest := rest.lstrip(b"\0")):
            rest = self._source.read(INPUT_BYTES)
            if not rest:
                self._ended = True
                return
        self._input = rest
        self._member = self._inflater.start()


class Watched:
    """Compressed bytes on their way to the zstd decoder, shown to a frame walker."""

    def __init__(self, source: Readable, frames: ZstdFrames) -> None:
        self._source = source
        self._frames = frames

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._frames.feed(data)
        return data


class ZstdFrames:
    """Follows the frame and block headers of a zstd stream (RFC 8878) to tell whether
    it ended on a frame boundary: the decoder takes a truncated stream for a short one.

    Only headers are parsed; block contents are skipped by their sizes.
    """

    _FRAME_MAGIC = 0xFD2FB528
    _SKIPPABLE = range(0x184D2A50, 0x184D2A60)

    def __init__(self) -> None:
        self.frames = 0
        self.problem = ""
        self._state = "magic"
        self._need = 4
        self._header = bytearray()
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        """Follow the next bytes of the stream."""
        pos = 0
        while pos < len(data) and not self.problem:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._header), len(data) - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._need:
                header = int.from_bytes(self._header, "little")
                self._header.clear()
                self._parse(header)

    def check(self, digest: str) -> None:
        """Raise ``InvalidContent`` unless the stream ended after a whole frame."""
        if self.problem:
            raise InvalidContent(f"layer {digest}: corrupt zstd stream: {self.problem}")
        ended = self._state == "magic" and not self._header and not self._skip
        if not (ended and self.frames):
            raise InvalidContent(f"layer {digest}: truncated zstd stream")

    def _parse(self, value: int) -> None:
        if self._state == "magic":
            self._magic(value)
        elif self._state == "skippable":
            self._skip = value
            self._expect("magic", 4)
        elif self._state == "descriptor":
            self._descriptor(value)
        elif self._state == "frame header":
            self._expect("block", 3)
        elif self._state == "block":
            self._block(value)
        else:  # the content checksum after a frame's last block
            self.frames += 1
            self._expect("magic", 4)

    def _magic(self, value: int) -> None:
        if value == self._FRAME_MAGIC:
            self._expect("descriptor", 1)
        elif value in self._SKIPPABLE:
            self.frames += 1
            self._expect("skippable", 4)
        else:
            self.problem = f"no frame starts with {value:#010x}"

    def _descriptor(self, value: int) -> None:
        if value & 0x08:
            self.problem = "reserved bit set in a frame header"
            return
        single_segment = bool(value & 0x20)
        self._checksum = bool(value & 0x04)
        window = 0 if single_segment else 1
        dictionary = (0, 1, 2, 4)[value & 0x03]
        content_size = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
        rest = window + dictionary + content_size
        if rest:
            self._expect("frame header", rest)
        else:
            self._expect("block", 3)

    def _block(self, value: int) -> None:
        last, kind, size = value & 1, (value >> 1) & 3, value >> 3
        if kind == 3:
            self.problem = "reserved block type"
            return
        self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
        if not last:
            return
        if self._checksum:
            self._expect("checksum", 4)
        else:
            self.frames += 1
            self._expect("magic", 4)

    def _expect(self, state: str, size: int) -> None:
        self._state = state
        self._need = size
