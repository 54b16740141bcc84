"""A layer blob as a tar stream: decompressed on the fly, counted and cut off.

The compression is the one the layer's media type names, checked against the first
bytes (a mislabelled layer is read as what it is): gzip, zstd or plain tar. A zstd
stream's frame and block headers are followed (``scanner/inventory/codecs.py``), because
the decoder takes a truncated stream for a short one. The expanded stream is counted and
refused past the limit (decompression bombs); corrupt or truncated streams raise ``InvalidContent``.

gzip is inflated by zlib-ng (the ``zlib-ng`` package) where its wheel is installed,
else by the standard library's zlib. ``bench/analyse.py`` measured ISA-L (``isal``)
too: it spends less CPU on real layers, but there the tar walk sets the pace and both
read a layer in the same time, while zlib-ng reads the benchmark's layer twice as fast.
Decompression runs a few blocks ahead of the tar reader in a thread of its own
(``ReadAhead``): downloading, hashing and inflating release the GIL, so on a free core
they overlap the reading of the tar headers. The tar reader skips forward without
copying what it skips (``Expanded.seek``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, cast

import zstandard

from scanner.errors import InvalidContent
from scanner.inventory.codecs import (
    CHUNK,
    INFLATER,
    INFLATERS,
    GzipMembers,
    Readable,
    Watched,
    ZstdFrames,
)
from scanner.inventory.results import Limits

log = logging.getLogger(__name__)

GZIP, ZSTD, TAR = "gzip", "zstd", "tar"
HEAD_BYTES = 512
# What the decompressing thread hands over at a time, and how many of those it may
# have ready: at most about a MiB decompressed ahead of the tar reader.
BLOCK = 256 << 10
BLOCKS_AHEAD = 4
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


_DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (
    EOFError,
    zstandard.ZstdError,
    *(inflater.error for inflater in INFLATERS.values()),
)


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
    stream: Readable,
    digest: str,
    media_type: str,
    limits: Limits,
    *,
    inflater: str = INFLATER,
    read_ahead: bool = True,
) -> Iterator[Expanded]:
    """The layer's tar stream, decompressed as its first bytes require.

    ``inflater`` names the zlib implementation for gzip (one of ``INFLATERS``);
    ``read_ahead`` decompresses in a thread of its own. Both are there for the
    benchmarks to compare; the defaults are the fastest.
    """
    declared = layer_compression(media_type, digest)
    head = _read_up_to(stream, HEAD_BYTES)
    kind = _sniff(head, declared, digest, media_type)
    source = _Prefixed(head, stream)
    finish: Callable[[], None] = _nothing
    decoder: Readable = source
    zstd_reader = None
    if kind == GZIP:
        decoder = GzipMembers(source, INFLATERS[inflater])
    elif kind == ZSTD:
        frames = ZstdFrames()
        decoder = zstd_reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], Watched(source, frames)),
            read_size=CHUNK,
            read_across_frames=True,
            closefd=False,
        )

        def finish() -> None:
            frames.check(digest)

    ahead = ReadAhead(decoder) if read_ahead else None
    try:
        yield Expanded(ahead or decoder, digest, kind, limits.max_expanded_bytes, finish)
    finally:
        # The thread goes first: it reads from the decoder and the blob.
        if ahead is not None:
            ahead.close()
        if zstd_reader is not None:
            zstd_reader.close()


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


class ReadAhead:
    """Reads a stream in a thread of its own, up to ``BLOCKS_AHEAD`` blocks ahead.

    What the thread does (download, hash, decompress) mostly releases the GIL, so it
    runs beside whoever reads from here. What it raises is raised to the reader, in
    order. ``close()`` stops the thread and waits for it, so that it never reads from
    a stream that its owner closed.
    """

    def __init__(self, source: Readable, block: int = BLOCK) -> None:
        self._source = source
        self._block = block
        self._ready: queue.Queue[bytes | BaseException] = queue.Queue(BLOCKS_AHEAD)
        self._stop = threading.Event()
        self._rest = b""
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="layer-read-ahead", daemon=True)
        self._thread.start()

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes of the next block; b"" at the end."""
        if not self._rest and not self._ended:
            item = self._ready.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            self._rest = item
            self._ended = not item
        if size is None or size < 0:
            size = len(self._rest)
        data, self._rest = self._rest[:size], self._rest[size:]
        return data

    def close(self) -> None:
        self._stop.set()
        while not self._ready.empty():  # free what was decompressed for nothing
            self._ready.get_nowait()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._block)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # whatever ends the thread must reach the reader
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        # The timeout only bounds how late a stop is seen; a free slot wakes us at once.
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


class Expanded:
    """The decompressed tar stream, counted, and cut off once it grows past the limit.

    It also tells its position and seeks forward, so the tar reader skips the contents
    it does not need without copying them; only the current block can be gone back in.
    """

    def __init__(
        self, reader: Readable, digest: str, kind: str, limit: int, finish: Callable[[], None]
    ) -> None:
        self._reader = reader
        self._digest = digest
        self._kind = kind
        self._limit = limit
        self._finish = finish
        self._block = b""
        self._offset = 0  # of the next byte, in the block
        self._position = 0  # of the next byte, in the stream
        self.count = 0  # bytes decompressed so far

    def read(self, size: int = -1, /) -> bytes:
        # tarfile always asks for a size; a whole-stream read would defeat the limit.
        size = CHUNK if size is None or size < 0 else size
        parts = []
        while size > 0 and self._available():
            part = self._block[self._offset : self._offset + size]
            self._advance(len(part))
            parts.append(part)
            size -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = 0, /) -> int:
        """Go to ``position`` (from the start): forward as far as the stream goes, or
        back within the current block."""
        if whence != 0:
            raise ValueError("the tar stream seeks from its start only")
        back = self._position - position
        if back > self._offset:
            raise InvalidContent(
                f"layer {self._digest}: the tar reader went back {back} bytes in the stream"
            )
        if back > 0:
            self._offset -= back
            self._position = position
        while self._position < position and self._available():
            self._advance(min(position - self._position, len(self._block) - self._offset))
        return self._position

    def drain(self) -> None:
        """Read (and check) the stream to its end."""
        while self._available():
            self._advance(len(self._block) - self._offset)

    def _advance(self, size: int) -> None:
        self._offset += size
        self._position += size

    def _available(self) -> bool:
        """Whether bytes are left, taking the next block when this one is used up."""
        if self._offset < len(self._block):
            return True
        try:
            data = self._reader.read(BLOCK)
        except _DECOMPRESSION_ERRORS as exc:
            raise InvalidContent(
                f"layer {self._digest}: corrupt or truncated {self._kind} stream: {exc}"
            ) from exc
        if not data:
            self._finish()
            return False
        self.count += len(data)
        if self.count > self._limit:
            raise InvalidContent(
                f"layer {self._digest} expands to more than the limit of {self._limit} bytes"
            )
        self._block, self._offset = data, 0
        return True
