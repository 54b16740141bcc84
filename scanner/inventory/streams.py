"""A layer blob as a tar stream: decompressed on the fly, counted and cut off.

The compression is the one the layer's media type names, checked against the first
bytes (a mislabelled layer is read as what it is): gzip, zstd or plain tar. A zstd
stream's frame and block headers are followed, because the decoder takes a truncated
stream for a short one. The expanded stream is counted and refused past the limit
(decompression bombs); corrupt or truncated streams raise ``InvalidContent``.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol, cast

import zstandard

from scanner.errors import InvalidContent
from scanner.inventory.results import Limits

log = logging.getLogger(__name__)

GZIP, ZSTD, TAR = "gzip", "zstd", "tar"
HEAD_BYTES = 512
CHUNK = 64 << 10
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DECOMPRESSION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


class Readable(Protocol):
    """Anything to read bytes from: a blob, a decompressor, a stream put together."""

    def read(self, size: int = -1, /) -> bytes: ...


def layer_compression(media_type: str, digest: str = "") -> str:
    """``gzip``, ``zstd`` or ``tar``, as a layer media type says; ``InvalidContent``
    for a type that is not a layer we can read."""
    kind = media_type.partition(";")[0].strip().lower()
    if kind.endswith(("tar.gzip", "+gzip")):
        return GZIP
    if kind.endswith(("tar.zstd", "+zstd")):
        return ZSTD
    if kind.endswith("tar"):
        return TAR
    layer = f"layer {digest} " if digest else ""
    raise InvalidContent(
        f"{layer}has media type {media_type!r}, which is not a layer we can read "
        "(supported: tar, tar+gzip, tar+zstd)"
    )


@contextmanager
def tar_stream(
    stream: Readable, digest: str, media_type: str, limits: Limits
) -> Iterator[Expanded]:
    """The layer's tar stream, decompressed as its first bytes require."""
    declared = layer_compression(media_type, digest)
    head = _read_up_to(stream, HEAD_BYTES)
    kind = _sniff(head, declared, digest, media_type)
    source = _Prefixed(head, stream)
    finish: Callable[[], None] = _nothing
    reader: Any = source
    if kind == GZIP:
        reader = gzip.GzipFile(fileobj=cast(IO[bytes], source), mode="rb")
    elif kind == ZSTD:
        frames = _ZstdFrames()
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], _Watched(source, frames)),
            read_size=CHUNK,
            read_across_frames=True,
            closefd=False,
        )

        def finish() -> None:
            frames.check(digest)

    try:
        yield Expanded(reader, digest, kind, limits.max_expanded_bytes, finish)
    finally:
        if reader is not source:
            reader.close()


def _sniff(head: bytes, declared: str, digest: str, media_type: str) -> str:
    """The compression the bytes show; a mislabelled layer is read as what it is."""
    if head.startswith(_GZIP_MAGIC):
        actual = GZIP
    elif head.startswith(_ZSTD_MAGIC):
        actual = ZSTD
    elif declared == TAR or head[257:262] == b"ustar":
        actual = TAR
    else:
        raise InvalidContent(
            f"layer {digest} is labelled {media_type!r} but is neither gzip, zstd nor tar"
        )
    if actual != declared:
        log.warning("layer %s is labelled %r but holds %s data", digest, media_type, actual)
    return actual


def _read_up_to(stream: Readable, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer at the end of the stream."""
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _nothing() -> None:
    return None


class _Prefixed:
    """A stream with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            head, self._head = self._head, b""
            return head + self._rest.read()
        chunk, self._head = self._head[:size], self._head[size:]
        return chunk


class Expanded:
    """The decompressed tar stream, counted, and cut off once it grows past the limit."""

    def __init__(
        self, reader: Readable, digest: str, kind: str, limit: int, finish: Callable[[], None]
    ) -> None:
        self._reader = reader
        self._digest = digest
        self._kind = kind
        self._limit = limit
        self._finish = finish
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        # tarfile always asks for a size; a whole-stream read would defeat the limit.
        size = CHUNK if size is None or size < 0 else size
        try:
            data = self._reader.read(size)
        except _DECOMPRESSION_ERRORS as exc:
            raise InvalidContent(
                f"layer {self._digest}: corrupt or truncated {self._kind} stream: {exc}"
            ) from exc
        if not data:
            self._finish()
        self.count += len(data)
        if self.count > self._limit:
            raise InvalidContent(
                f"layer {self._digest} expands to more than the limit of {self._limit} bytes"
            )
        return data

    def drain(self) -> None:
        """Read (and check) the stream to its end."""
        while self.read(CHUNK):
            pass


class _Watched:
    """Compressed bytes on their way to the zstd decoder, shown to a frame walker."""

    def __init__(self, source: Readable, frames: _ZstdFrames) -> None:
        self._source = source
        self._frames = frames

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._frames.feed(data)
        return data


class _ZstdFrames:
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
