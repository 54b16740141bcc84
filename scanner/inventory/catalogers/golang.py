"""Go modules compiled into a binary, from the build information the linker embeds.

The ``.go.buildinfo`` section starts with a 32-byte header: the magic
``"\\xff Go buildinf:"`` (14 bytes), the pointer size, a flags byte (bit 1: strings
follow inline, Go 1.18 and later). Inline, two strings follow, each prefixed by its
length as an unsigned varint: the Go version and the module information. The module
information, between two 16-byte sentinels, has tab-separated lines: ``mod`` (the
main module), ``dep`` (a dependency) and ``=>`` (a replacement of the line before),
each ``path version [sum]``. Before Go 1.18 (flag bit 1 clear) the header holds the
addresses of the two strings instead; they are followed through the ELF section
table, so that older format is read from ELF binaries only.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB
from scanner.inventory.packages import GO, Package

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
        """The main module and every dependency; [] for a binary not built by Go."""
        file.seek(0)
        head = file.read(64)
        elf = Elf.load(path, file, head) if head.startswith(ELF_MAGIC) else None
        blob = _scan(file) if elf is None else elf.section(SECTION)
        if not blob.startswith(MAGIC):
            return []
        if len(blob) < HEADER:
            raise InvalidContent(f"{path}: Go build information truncated")
        if blob[15] & INLINE_FLAG:
            modinfo = _inline_strings(path, blob)[1]
        elif elf is not None:
            modinfo = _pointer_strings(path, blob, elf)[1]
        else:
            return []  # before Go 1.18, and no section table to follow its pointers
        return [
            Package(type=GO, name=name, version=version, path=path)
            for name, version in modules(modinfo)
        ]


# ELF section header fields: name offset, type, address, file offset, size
Section = tuple[int, int, int, int, int]


class Elf:
    """The section table of an ELF file: section contents by name, memory by address."""

    NOBITS = 8  # a section that occupies no file space (.bss)

    def __init__(self, path: str, file: BinaryIO, sections: list[Section], names: bytes) -> None:
        self.path = path
        self.file = file
        self.sections = sections
        self.names = names

    @classmethod
    def load(cls, path: str, file: BinaryIO, head: bytes) -> Elf | None:
        """The section table, or None when the file has none (it was stripped away)."""
        if len(head) < 64 or head[4] not in (1, 2) or head[5] not in (1, 2):
            raise InvalidContent(f"{path}: truncated or unknown ELF header")
        order = "<" if head[5] == 1 else ">"
        if head[4] == 2:
            (table_offset,) = struct.unpack_from(order + "Q", head, 0x28)
            entry_size, count, names_index = struct.unpack_from(order + "HHH", head, 0x3A)
            layout = struct.Struct(order + "II8xQQQ")
        else:
            (table_offset,) = struct.unpack_from(order + "I", head, 0x20)
            entry_size, count, names_index = struct.unpack_from(order + "HHH", head, 0x2E)
            layout = struct.Struct(order + "II4xIII")
        if table_offset == 0 or count == 0 or names_index >= count or entry_size < layout.size:
            return None
        table = _read(path, file, table_offset, entry_size * count)
        sections = [layout.unpack_from(table, index * entry_size) for index in range(count)]
        names = sections[names_index]
        return cls(path, file, sections, _read(path, file, names[3], names[4]))

    def section(self, name: bytes) -> bytes:
        """The contents of the first section called ``name``; b"" when there is none."""
        for name_offset, kind, _, offset, size in self.sections:
            end = self.names.find(b"\0", name_offset)
            if end >= 0 and self.names[name_offset:end] == name:
                return b"" if kind == self.NOBITS else _read(self.path, self.file, offset, size)
        return b""

    def read_memory(self, address: int, size: int) -> bytes:
        """``size`` bytes the program would see at virtual ``address``."""
        for _, kind, start, offset, length in self.sections:
            if (
                kind != self.NOBITS
                and start
                and start <= address
                and address + size <= start + length
            ):
                return _read(self.path, self.file, offset + address - start, size)
        raise InvalidContent(f"{self.path}: Go build information points outside the sections")


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


def _inline_strings(path: str, blob: bytes) -> tuple[bytes, bytes]:
    """Go 1.18 and later: the version and the module information follow the header."""
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


def _pointer_strings(path: str, blob: bytes, elf: Elf) -> tuple[bytes, bytes]:
    """Before Go 1.18: the header holds the addresses of two Go string headers (data
    address, length), words of the pointer size in the byte order of flags bit 0."""
    size = blob[14]
    if size not in (4, 8) or len(blob) < 16 + 2 * size:
        raise InvalidContent(f"{path}: Go build information with pointer size {size}")
    order = ">" if blob[15] & 1 else "<"
    words = struct.Struct(order + ("II" if size == 4 else "QQ"))
    strings = []
    for address in words.unpack_from(blob, 16):
        data, length = words.unpack(elf.read_memory(address, 2 * size))
        strings.append(elf.read_memory(data, length) if length else b"")
    return strings[0], strings[1]


def modules(modinfo: bytes) -> list[tuple[str, str]]:
    """(module path, version) of the main module and each dependency in ``modinfo``.

    A dependency replaced by another module reports the replacement, which is the
    code that was built in; one replaced by a local directory (no version of its own)
    keeps the path and version it was required at.
    """
    if len(modinfo) >= 33 and modinfo[-17:-16] == b"\n":  # drop the sentinels around the text
        modinfo = modinfo[16:-16]
    found: list[tuple[str, str]] = []
    for line in modinfo.decode("utf-8", errors="replace").split("\n"):
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3 and fields[1]:
            found.append((fields[1], fields[2]))
        elif fields[0] == "=>" and len(fields) >= 3 and found:
            replacement, version = fields[1], fields[2]
            if version and version != "(devel)":
                found[-1] = (replacement, version)
    return found
