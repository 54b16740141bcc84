"""Go modules compiled into a binary, from the build information the linker embeds.

The ``.go.buildinfo`` section starts with a 32-byte header: the magic
``"\\xff Go buildinf:"`` (14 bytes), the pointer size, a flags byte (bit 1: strings
follow inline, Go 1.18 and later). Inline, two strings follow, each prefixed by its
length as an unsigned varint: the Go version and the module information. The module
information, between two 16-byte sentinels, has tab-separated lines: ``mod`` (the
main module), ``dep`` (a dependency) and ``=>`` (a replacement of the line before),
each ``path version [sum]``.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from scanner.catalogers._common import MIB
from scanner.errors import InvalidContent
from scanner.packages import GO, Package

MAGIC = b"\xff Go buildinf:"
HEADER = 32
INLINE_FLAG = 0x2
SECTION = b".go.buildinfo"

ELF_MAGIC = b"\x7fELF"
MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")
PE_MAGIC = b"MZ"

MAX_SECTION = 16 * MIB
MAX_SCAN = 1024 * MIB  # how far a binary without section headers is searched
CHUNK = 4 * MIB


class GoCataloger:
    """ELF, Mach-O and PE executables with Go build information."""

    name = "go"

    def wants(self, path: str, head: bytes) -> bool:
        """Any executable format Go writes, by its magic number."""
        return head.startswith((ELF_MAGIC, PE_MAGIC, *MACHO_MAGICS))

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """The main module and every dependency; [] for a binary not built by Go 1.18+."""
        file.seek(0)
        head = file.read(64)
        blob = _elf_section(path, file, head) if head.startswith(ELF_MAGIC) else None
        if blob is None:
            blob = _scan(file)
        elif not blob.startswith(MAGIC):
            blob = b""
        if not blob:
            return []
        return [
            Package(type=GO, name=name, version=version, path=path)
            for name, version in modules(path, blob)
        ]


def _elf_section(path: str, file: BinaryIO, head: bytes) -> bytes | None:
    """The .go.buildinfo section's bytes, b"" when the ELF has none, or None when the
    section headers cannot tell (stripped away), so the data must be searched."""
    if len(head) < 64 or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise InvalidContent(f"{path}: truncated or unknown ELF header")
    wide = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if wide:
        (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
        entsize, count, names_index = struct.unpack_from(order + "HHH", head, 0x3A)
        layout = struct.Struct(order + "II8xQQQ")  # name, type, flags, addr, offset, size
    else:
        (shoff,) = struct.unpack_from(order + "I", head, 0x20)
        entsize, count, names_index = struct.unpack_from(order + "HHH", head, 0x2E)
        layout = struct.Struct(order + "II4xIII")
    if shoff == 0 or count == 0 or names_index >= count or entsize < layout.size:
        return None
    table = _read(path, file, shoff, entsize * count)
    sections = [layout.unpack_from(table, index * entsize) for index in range(count)]
    names = _read(path, file, sections[names_index][3], sections[names_index][4])
    for name_offset, kind, _, offset, size in sections:
        end = names.find(b"\0", name_offset)
        if end >= 0 and names[name_offset:end] == SECTION:
            return b"" if kind == 8 else _read(path, file, offset, size)  # 8: SHT_NOBITS
    return b""


def _read(path: str, file: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``, both taken from the ELF headers and so untrusted."""
    if size > MAX_SECTION:
        raise InvalidContent(f"{path}: ELF section of {size} bytes")
    if offset + size > file.seek(0, 2):
        raise InvalidContent(f"{path}: ELF section outside the file")
    file.seek(offset)
    return file.read(size)


def _scan(file: BinaryIO) -> bytes:
    """The bytes from the first 16-byte aligned magic on (as much as a section may
    hold), or b"". Read in overlapping chunks so memory stays bounded."""
    position = 0
    file.seek(0)
    carry = b""
    while position < MAX_SCAN:
        chunk = file.read(CHUNK)
        if not chunk:
            return b""
        data = carry + chunk
        base = position - len(carry)
        found = data.find(MAGIC)
        while found >= 0:
            if (base + found) % 16 == 0:
                file.seek(base + found)
                return file.read(MAX_SECTION)
            found = data.find(MAGIC, found + 1)
        carry = data[-len(MAGIC) :]
        position += len(chunk)
    return b""


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while offset < len(data) and shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
    raise ValueError("bad varint")


def _inline_strings(path: str, blob: bytes) -> tuple[bytes, bytes] | None:
    if len(blob) < HEADER or not blob.startswith(MAGIC):
        raise InvalidContent(f"{path}: Go build information truncated")
    if not blob[15] & INLINE_FLAG:
        return None  # Go before 1.18: pointers into the data segment, not read
    strings = []
    offset = HEADER
    try:
        for _ in range(2):
            length, offset = _varint(blob, offset)
            if offset + length > len(blob):
                raise ValueError("string past the end")
            strings.append(blob[offset : offset + length])
            offset += length
    except ValueError as error:
        raise InvalidContent(f"{path}: Go build information: {error}") from error
    return strings[0], strings[1]


def modules(path: str, blob: bytes) -> list[tuple[str, str]]:
    """(module path, version) of the main module and each dependency.

    A dependency replaced by another module reports the replacement, which is the
    code that was built in; one replaced by a local directory (no version of its own)
    keeps the path and version it was required at.
    """
    strings = _inline_strings(path, blob)
    if strings is None:
        return []
    info = strings[1]
    if len(info) >= 33 and info[-17:-16] == b"\n":  # drop the sentinels around the text
        info = info[16:-16]
    found: list[tuple[str, str]] = []
    for line in info.decode("utf-8", errors="replace").split("\n"):
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3 and fields[1]:
            found.append((fields[1], fields[2]))
        elif fields[0] == "=>" and len(fields) >= 3 and found:
            replacement, version = fields[1], fields[2]
            if version and version != "(devel)":
                found[-1] = (replacement, version)
    return found
