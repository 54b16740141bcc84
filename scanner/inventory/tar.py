"""The safe tar reader: one layer's tar stream, member by member, into a ``LayerAnalysis``.

``tarfile`` reads the stream front to back (``Expanded`` seeks forward only, so
contents nobody wants are skipped without being copied): nothing is extracted and the
layer is never held whole in memory. Only the files a cataloger asks for are copied,
into a spool that moves to disk past a few MiB. Anything that could hurt a reader that
extracts the layer (paths escaping the root, devices, FIFOs, corrupt or oversized
headers) is refused with ``InvalidContent``. Whiteouts and opaque directories are recorded for
the overlay merge.
"""

from __future__ import annotations

import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Self, cast

from scanner.errors import InvalidContent
from scanner.inventory.osinfo import OS_FILES
from scanner.inventory.packages import Cataloger, Package
from scanner.inventory.results import LayerAnalysis, Limits
from scanner.inventory.streams import CHUNK, HEAD_BYTES, Expanded

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
SPOOL_BYTES = 8 << 20
OS_FILE_BYTES = 64 << 10
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


class _HeaderProblem(Exception):
    """A tar header we refuse; tarfile itself would take it for the end of the archive."""


class _CheckedTarInfo(tarfile.TarInfo):
    """Headers that fail their checksum or are cut short are errors, not the end."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            info = super().frombuf(buf, encoding, errors)
        # tarfile raises these two; its type stubs leave them out.
        except tarfile.TruncatedHeaderError as exc:  # type: ignore[attr-defined]
            raise _HeaderProblem(f"truncated tar header: {exc}") from exc
        except tarfile.InvalidHeaderError as exc:  # type: ignore[attr-defined]
            raise _HeaderProblem(f"corrupt tar header: {exc}") from exc
        if info.type in _LONG_HEADER_TYPES and info.size > _MAX_HEADER_BYTES:
            raise _HeaderProblem(
                f"tar extended header of {info.size} bytes, over the limit of {_MAX_HEADER_BYTES}"
            )
        return info


class LayerReader:
    """Walks one layer's tar stream and records what the analysis needs."""

    def __init__(self, digest: str, catalogers: Sequence[Cataloger], limits: Limits) -> None:
        self.analysis = LayerAnalysis(digest=digest)
        self.digest = digest
        self.catalogers = list(catalogers)
        self.limits = limits

    def read(self, expanded: Expanded) -> None:
        """Handle every member of the tar stream."""
        try:
            # "r:" rather than the streaming "r|": tarfile then seeks past contents
            # instead of reading them through its own small buffer, and checks that
            # each member's contents are all there.
            with tarfile.open(
                fileobj=cast(IO[bytes], expanded),
                mode="r:",
                tarinfo=_CheckedTarInfo,
            ) as tar:
                members = 0
                while (member := tar.next()) is not None:
                    members += 1
                    if members > self.limits.max_members:
                        raise self._refuse(f"more than {self.limits.max_members} entries")
                    self._member(tar, member)
                    # tarfile keeps every header it read otherwise (in an attribute
                    # its type stubs leave out).
                    tar.members.clear()  # type: ignore[attr-defined]
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
        file = _contents(tar, member)
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
            shutil.copyfileobj(file, spool, CHUNK)
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


def _contents(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes] | None:
    """The member's contents, read straight from the tar stream, which tarfile has left
    at them: a head is read from every regular file of a layer, and tarfile's own file
    object costs more than that read. Sparse members are left to tarfile, which knows
    where their pieces go."""
    if member.issparse():
        return tar.extractfile(member)
    return cast(IO[bytes], _Contents(cast(Expanded, tar.fileobj), member.size))


class _Contents:
    """The next ``size`` bytes of the stream."""

    def __init__(self, stream: Expanded, size: int) -> None:
        self._stream = stream
        self._left = size

    def read(self, size: int = -1, /) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")  # as tarfile's own says
        self._left -= len(data)
        return data


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
