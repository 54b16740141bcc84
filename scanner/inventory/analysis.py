"""Read image layers as streams and merge what they hold into an image inventory.

A layer is read once, straight from the registry: decompressed on the fly, walked
member by member with ``tarfile`` in streaming mode, never extracted and never held
whole in memory. Only the files a cataloger asks for are copied, into a spool that
moves to disk past a few MiB. Anything that could hurt a reader that extracts the
layer (paths escaping the root, devices, FIFOs, decompression bombs) is refused.

What a layer holds is recorded per layer (``LayerAnalysis``, cached by digest) and
the layers are merged with overlay semantics afterwards (``merge``), so a layer shared
by many images is read once.
"""

from __future__ import annotations

import gzip
import logging
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import IO, Any, BinaryIO, Protocol

import zstandard

from scanner.errors import InvalidContent
from scanner.inventory.osinfo import OS_FILES, OSInfo, detect_os
from scanner.inventory.packages import Cataloger, Package
from scanner.registry.client import RegistryClient
from scanner.registry.images import Layer

log = logging.getLogger(__name__)

# Windows base layers: served from elsewhere by design, never by the registry.
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
GZIP, ZSTD, TAR = "gzip", "zstd", "tar"

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
HEAD_BYTES = 512
SPOOL_BYTES = 8 << 20
OS_FILE_BYTES = 64 << 10
_CHUNK = 64 << 10
# Long names and pax records are read into memory whole by tarfile; real ones are tiny.
_MAX_HEADER_BYTES = 1 << 20
_LONG_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DECOMPRESSION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# -- results ---------------------------------------------------------------------------


@dataclass
class LayerAnalysis:
    """What one layer holds, independent of the layers below it.

    ``packages`` maps each file a cataloger read to the packages found in it; an empty
    list records that the layer replaced that file with one holding none (or with a
    link), which hides the lower layers' packages there. ``os_files`` holds the text
    of OS description files; "" likewise marks one replaced by a non-regular file.
    """

    digest: str
    packages: dict[str, list[Package]] = field(default_factory=dict)
    os_files: dict[str, str] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)  # paths deleted from lower layers
    opaque_dirs: list[str] = field(default_factory=list)  # dirs whose lower contents go
    expanded_bytes: int = 0  # of the uncompressed tar stream

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_json`` gives back an equal analysis."""
        return {
            "digest": self.digest,
            "packages": {
                path: [package.to_json() for package in found]
                for path, found in self.packages.items()
            },
            "os_files": dict(self.os_files),
            "whiteouts": list(self.whiteouts),
            "opaque_dirs": list(self.opaque_dirs),
            "expanded_bytes": self.expanded_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerAnalysis:
        """The analysis ``to_json`` described."""
        return cls(
            digest=data["digest"],
            packages={
                path: [Package.from_json(package) for package in found]
                for path, found in data["packages"].items()
            },
            os_files=dict(data["os_files"]),
            whiteouts=list(data["whiteouts"]),
            opaque_dirs=list(data["opaque_dirs"]),
            expanded_bytes=data["expanded_bytes"],
        )


@dataclass(frozen=True)
class Limits:
    """How much a layer may make us read."""

    max_expanded_bytes: int = 8 << 30  # uncompressed tar stream of one layer
    max_file_bytes: int = 256 << 20  # one file handed to a cataloger
    max_members: int = 2_000_000  # tar entries of one layer


DEFAULT_LIMITS = Limits()


@dataclass
class Inventory:
    """What the final image holds: its packages (sorted) and its OS."""

    packages: list[Package]
    os: OSInfo


# -- one layer -------------------------------------------------------------------------


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


def analyse_layer(
    stream: BinaryIO | _Readable,
    *,
    digest: str,
    media_type: str,
    catalogers: Sequence[Cataloger],
    limits: Limits = DEFAULT_LIMITS,
) -> LayerAnalysis:
    """Read a layer blob from ``stream`` (compressed as ``media_type`` says, or as its
    first bytes show) and record its packages, OS files and whiteouts.

    Raises ``InvalidContent`` naming the layer (and the member) for corrupt or truncated
    streams, unsafe members, and anything over ``limits``.
    """
    reader = _LayerReader(digest, catalogers, limits)
    with _tar_stream(stream, digest, media_type, limits) as expanded:
        reader.read(expanded)
        expanded.drain()  # what follows the archive counts too, and must decompress
        reader.analysis.expanded_bytes = expanded.count
    return reader.analysis


@contextmanager
def _tar_stream(
    stream: _Readable, digest: str, media_type: str, limits: Limits
) -> Iterator[_Expanded]:
    """The layer's tar stream, decompressed as its first bytes require."""
    declared = layer_compression(media_type, digest)
    head = _read_up_to(stream, HEAD_BYTES)
    kind = _sniff(head, declared, digest, media_type)
    source = _Prefixed(head, stream)
    finish: Callable[[], None] = _nothing
    reader: Any = source
    if kind == GZIP:
        reader = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
    elif kind == ZSTD:
        frames = _ZstdFrames()
        reader = zstandard.ZstdDecompressor().stream_reader(
            _Watched(source, frames), read_size=_CHUNK, read_across_frames=True, closefd=False
        )

        def finish() -> None:
            frames.check(digest)

    try:
        yield _Expanded(reader, digest, kind, limits.max_expanded_bytes, finish)
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


def _read_up_to(stream: _Readable, size: int) -> bytes:
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

    def __init__(self, head: bytes, rest: _Readable) -> None:
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


class _Expanded:
    """The decompressed tar stream, counted, and cut off once it grows past the limit."""

    def __init__(
        self, reader: _Readable, digest: str, kind: str, limit: int, finish: Callable[[], None]
    ) -> None:
        self._reader = reader
        self._digest = digest
        self._kind = kind
        self._limit = limit
        self._finish = finish
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        # tarfile always asks for a size; a whole-stream read would defeat the limit.
        size = _CHUNK if size is None or size < 0 else size
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
        while self.read(_CHUNK):
            pass


class _Watched:
    """Compressed bytes on their way to the zstd decoder, shown to a frame walker."""

    def __init__(self, source: _Readable, frames: _ZstdFrames) -> None:
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


class _HeaderProblem(Exception):
    """A tar header we refuse; tarfile itself would take it for the end of the archive."""


class _CheckedTarInfo(tarfile.TarInfo):
    """Headers that fail their checksum or are cut short are errors, not the end."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.TruncatedHeaderError as exc:
            raise _HeaderProblem(f"truncated tar header: {exc}") from exc
        except tarfile.InvalidHeaderError as exc:
            raise _HeaderProblem(f"corrupt tar header: {exc}") from exc
        if info.type in _LONG_HEADER_TYPES and info.size > _MAX_HEADER_BYTES:
            raise _HeaderProblem(
                f"tar extended header of {info.size} bytes, over the limit of {_MAX_HEADER_BYTES}"
            )
        return info


class _LayerReader:
    """Walks one layer's tar stream and records what the analysis needs."""

    def __init__(self, digest: str, catalogers: Sequence[Cataloger], limits: Limits) -> None:
        self.analysis = LayerAnalysis(digest=digest)
        self.digest = digest
        self.catalogers = list(catalogers)
        self.limits = limits

    def read(self, expanded: _Expanded) -> None:
        """Handle every member of the tar stream."""
        try:
            with tarfile.open(
                fileobj=expanded,  # type: ignore[arg-type]
                mode="r|",
                tarinfo=_CheckedTarInfo,
            ) as tar:
                members = 0
                while (member := tar.next()) is not None:
                    members += 1
                    if members > self.limits.max_members:
                        raise self._refuse(f"more than {self.limits.max_members} entries")
                    self._member(tar, member)
                    # Streaming tarfile keeps every header it read otherwise.
                    tar.members.clear()
        except _HeaderProblem as exc:
            raise self._refuse(str(exc)) from exc
        except tarfile.TarError as exc:
            raise self._refuse(f"corrupt or truncated tar stream: {exc}") from exc

    def _refuse(self, problem: str) -> InvalidContent:
        return InvalidContent(f"layer {self.digest}: {problem}")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = _clean(member.name)
        if path is None:
            raise self._refuse(f"member {member.name!r} escapes the image root")
        if not path:
            return  # the root directory itself
        self._forget(path)  # a later entry for a path replaces an earlier one
        directory, base = posixpath.split(path)
        special = _special_kind(member)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(directory, base, member.name)
        elif special:
            raise self._refuse(f"member {member.name!r} is {special}; layers must not hold one")
        elif member.issym():
            self._symlink(path, member)
        elif member.islnk():
            self._hardlink(path, member)
        elif member.isreg():
            self._regular(tar, member, path)

    def _forget(self, path: str) -> None:
        self.analysis.packages.pop(path, None)
        self.analysis.os_files.pop(path, None)

    def _whiteout(self, directory: str, base: str, name: str) -> None:
        if base == OPAQUE_WHITEOUT:
            self.analysis.opaque_dirs.append(directory)
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # aufs bookkeeping (its hard-link store), not a deletion
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise self._refuse(f"member {name!r} is not a valid whiteout")
        self.analysis.whiteouts.append(posixpath.join(directory, hidden))

    def _symlink(self, path: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        # An absolute target is resolved inside the image's root by whoever follows it.
        if not target.startswith("/") and _clean(f"{posixpath.dirname(path)}/{target}") is None:
            raise self._refuse(
                f"symlink {member.name!r} -> {target!r} points outside the image root"
            )
        self._mask(path)

    def _hardlink(self, path: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        if target.startswith("/"):
            raise self._refuse(
                f"hard link {member.name!r} -> {target!r} points to an absolute path"
            )
        resolved = _clean(target)
        if resolved is None:
            raise self._refuse(
                f"hard link {member.name!r} -> {target!r} points outside the image root"
            )
        found = self.analysis.packages.get(resolved)
        text = self.analysis.os_files.get(resolved)
        if found is None and text is None:
            self._mask(path)  # a target in a lower layer: its content is not ours to read
            return
        if found is not None:
            self.analysis.packages[path] = [replace(p, path=path) for p in found]
        if text is not None and path in OS_FILES:
            self.analysis.os_files[path] = text

    def _mask(self, path: str) -> None:
        """Record that this layer puts something unreadable at ``path``."""
        if path in OS_FILES:
            self.analysis.os_files[path] = ""
        if any(cataloger.wants(path, b"") for cataloger in self.catalogers):
            self.analysis.packages[path] = []

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        is_os_file = path in OS_FILES
        if not self.catalogers and not is_os_file:
            return
        file = tar.extractfile(member)
        if file is None:
            return
        head = file.read(HEAD_BYTES)
        wanting = [c for c in self.catalogers if c.wants(path, head)]
        if wanting:
            self._catalogue(path, member.size, head, file, wanting, is_os_file)
        elif is_os_file:
            rest = file.read(OS_FILE_BYTES - len(head))
            self.analysis.os_files[path] = _text(head + rest)

    def _catalogue(
        self,
        path: str,
        size: int,
        head: bytes,
        file: IO[bytes],
        wanting: list[Cataloger],
        is_os_file: bool,
    ) -> None:
        """Spool the file (to disk past a few MiB) and let each cataloger parse it."""
        if size > self.limits.max_file_bytes:
            raise self._refuse(
                f"{path} is {size} bytes, over the limit of {self.limits.max_file_bytes}"
                " for a file to catalogue"
            )
        found: list[Package] = []
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            spool.write(head)
            shutil.copyfileobj(file, spool, _CHUNK)
            for cataloger in wanting:
                spool.seek(0)
                try:
                    found.extend(cataloger.parse(path, spool))  # type: ignore[arg-type]
                except InvalidContent as exc:
                    raise self._refuse(f"{path}: {exc}") from exc
            if is_os_file:
                spool.seek(0)
                self.analysis.os_files[path] = _text(spool.read(OS_FILE_BYTES))
        self.analysis.packages[path] = found


def _special_kind(member: tarfile.TarInfo) -> str:
    """What kind of special file the member is, or "" for any other kind."""
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return ""


def _clean(name: str) -> str | None:
    """``name`` relative to the root, "." and ".." resolved; None if it leaves the root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# -- images ----------------------------------------------------------------------------


def merge(layers: Sequence[LayerAnalysis], layer_digests: Sequence[str]) -> Inventory:
    """The inventory of the image the layers make, bottom layer first.

    A file of an upper layer replaces the same path below; a whiteout removes a path and
    everything under it from the layers below; an opaque directory hides the lower
    layers' entries under it. Packages are tagged with the digest of their file's layer.
    """
    if len(layers) != len(layer_digests):
        raise ValueError(f"{len(layers)} layer analyses for {len(layer_digests)} digests")
    files: dict[str, list[Package]] = {}
    os_files: dict[str, str] = {}
    for analysis, digest in zip(layers, layer_digests, strict=True):
        _hide_lower(files, analysis)
        _hide_lower(os_files, analysis)
        for path, found in analysis.packages.items():
            files[path] = [replace(p, layer=digest, path=p.path or path) for p in found]
        os_files.update(analysis.os_files)
    packages = sorted((p for found in files.values() for p in found), key=_package_order)
    return Inventory(packages=packages, os=detect_os(os_files))


def _hide_lower(entries: dict[str, Any], analysis: LayerAnalysis) -> None:
    """Drop what the layer's whiteouts and opaque directories hide."""
    gone = set(analysis.whiteouts)
    opaque = set(analysis.opaque_dirs)
    if gone or opaque:
        for path in [path for path in entries if _hidden(path, gone, opaque)]:
            del entries[path]


def _hidden(path: str, gone: set[str], opaque: set[str]) -> bool:
    if path in gone:
        return True
    parts = path.split("/")
    for depth in range(len(parts)):
        ancestor = "/".join(parts[:depth])  # "" is the root, which may be opaque
        if ancestor in opaque or (depth and ancestor in gone):
            return True
    return False


def _package_order(package: Package) -> tuple[str, str, str, str]:
    return package.type, package.name, package.version, package.path


def analyse_image(
    client: RegistryClient,
    repository: str,
    layers: Sequence[Layer],
    *,
    catalogers: Sequence[Cataloger],
    cache_get: Callable[[str], LayerAnalysis | None],
    cache_put: Callable[[str, str, int, LayerAnalysis], None],
    checkpoint: Callable[[], None] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Inventory:
    """Analyse each layer (from ``cache_get`` when it has it, else downloaded, verified
    and stored with ``cache_put``) and merge them.

    ``checkpoint`` runs before each download and may raise ``ScanStopped``. Foreign
    layers are skipped (no registry serves them); any other type we cannot read
    raises ``InvalidContent`` before anything is downloaded.
    """
    readable = []
    for layer in layers:
        if layer.media_type == FOREIGN_LAYER:
            log.info("skipping foreign layer %s of %s", layer.digest, repository)
            continue
        layer_compression(layer.media_type, layer.digest)
        readable.append(layer)
    step = checkpoint or _nothing
    analyses: dict[str, LayerAnalysis] = {}
    for layer in readable:
        if layer.digest in analyses:
            continue  # the same layer twice in one image
        cached = cache_get(layer.digest)
        if cached is None:
            step()
            cached = _download(client, repository, layer, catalogers, limits)
            cache_put(layer.digest, layer.media_type, layer.size, cached)
        analyses[layer.digest] = cached
    return merge([analyses[layer.digest] for layer in readable], [x.digest for x in readable])


def _download(
    client: RegistryClient,
    repository: str,
    layer: Layer,
    catalogers: Sequence[Cataloger],
    limits: Limits,
) -> LayerAnalysis:
    """Analyse a layer from the registry; only a blob verified to its end counts."""
    with client.open_blob(repository, layer.digest, size=layer.size) as blob:
        try:
            analysis = analyse_layer(
                blob,
                digest=layer.digest,
                media_type=layer.media_type,
                catalogers=catalogers,
                limits=limits,
            )
        except InvalidContent:
            # Bytes that are not the layer's explain a broken stream better than it does.
            _drain(blob)
            raise
        _drain(blob)
    return analysis


def _drain(blob: BinaryIO) -> None:
    while blob.read(_CHUNK):
        pass
