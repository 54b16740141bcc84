"""Berkeley DB hash databases, read page by page without libdb.

Older rpm releases keep their package headers in such a file (``var/lib/rpm/Packages``).
Layout: page 0 is the metadata page (magic, page size, last page number); every page
starts with a 26-byte header (next page at 16, item count at 20, high free offset at 22,
page type at 25). A hash page holds key/data items alternately, addressed by an
array of 16-bit offsets after the header; an item is either on the page (type byte
then bytes) or a reference to a chain of overflow pages (page number and total
length) when it is too large. Numbers are in the byte order of the machine that
wrote the file, which the magic number reveals.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB

HASH_MAGIC = 0x061561
P_HASH_UNSORTED, P_OVERFLOW, P_HASHMETA, P_HASH = 2, 7, 8, 13
H_KEYDATA, H_OFFPAGE = 1, 3
PAGE_HEADER = 26
CHECKSUM_FLAG = 0x01  # metaflags: pages carry checksums, which rpm never asked for

MAX_ITEM = 64 * MIB
MAX_FILE = 4096 * MIB


class HashFile:
    """Key/data pairs of one Berkeley DB hash file, read through a seekable file."""

    def __init__(self, path: str, file: BinaryIO) -> None:
        self.path = path
        self.file = file
        file.seek(0)
        meta = file.read(512)
        if len(meta) < 512:
            raise InvalidContent(f"{path}: too short for a Berkeley DB file")
        for order in ("<", ">"):
            if struct.unpack_from(order + "I", meta, 12)[0] == HASH_MAGIC:
                self.order = order
                break
        else:
            raise InvalidContent(f"{path}: not a Berkeley DB hash database")
        self.page_size = self._u32(meta, 20)
        if self.page_size < 512 or self.page_size > 65536 or self.page_size & (self.page_size - 1):
            raise InvalidContent(f"{path}: bad Berkeley DB page size {self.page_size}")
        if meta[24] != 0 or meta[26] & CHECKSUM_FLAG:
            raise InvalidContent(f"{path}: encrypted or checksummed Berkeley DB not supported")
        if meta[25] != P_HASHMETA:
            raise InvalidContent(f"{path}: Berkeley DB metadata page has type {meta[25]}")
        size = file.seek(0, 2)
        if size > MAX_FILE:
            raise InvalidContent(f"{path}: larger than {MAX_FILE} bytes")
        self.pages = min(self._u32(meta, 32) + 1, size // self.page_size)
        # Every overflow page belongs to one item: reading more of them than the file
        # has pages means chains are shared or looping.
        self.overflow_budget = self.pages

    def _u32(self, data: bytes, offset: int) -> int:
        return struct.unpack_from(self.order + "I", data, offset)[0]

    def _u16(self, data: bytes, offset: int) -> int:
        return struct.unpack_from(self.order + "H", data, offset)[0]

    def _page(self, number: int) -> bytes:
        self.file.seek(number * self.page_size)
        page = self.file.read(self.page_size)
        if len(page) != self.page_size:
            raise InvalidContent(f"{self.path}: page {number} truncated")
        return page

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, data) pair, in page order."""
        for number in range(1, self.pages):
            page = self._page(number)
            if page[25] in (P_HASH, P_HASH_UNSORTED):
                yield from self._page_items(number, page)

    def _page_items(self, number: int, page: bytes) -> Iterator[tuple[bytes, bytes]]:
        entries = self._u16(page, 20)
        first_item = PAGE_HEADER + 2 * entries
        if entries % 2 or first_item > self.page_size:
            raise InvalidContent(f"{self.path}: page {number} has a bad item count {entries}")
        values: list[bytes] = []
        end = self.page_size  # items are packed downwards from the end of the page
        for index in range(entries):
            start = self._u16(page, PAGE_HEADER + 2 * index)
            if not first_item <= start < end:
                raise InvalidContent(f"{self.path}: page {number} item {index} out of place")
            values.append(self._item(number, page[start:end]))
            end = start
        for index in range(0, entries, 2):
            yield values[index], values[index + 1]

    def _item(self, number: int, item: bytes) -> bytes:
        if item[0] == H_KEYDATA:
            return item[1:]
        if item[0] == H_OFFPAGE and len(item) >= 12:
            return self._overflow(self._u32(item, 4), self._u32(item, 8))
        raise InvalidContent(
            f"{self.path}: page {number} has an item of unsupported type {item[0]}"
        )

    def _overflow(self, number: int, length: int) -> bytes:
        if length > MAX_ITEM:
            raise InvalidContent(f"{self.path}: overflow item of {length} bytes")
        chunks: list[bytes] = []
        remaining = length
        while remaining > 0:
            self.overflow_budget -= 1
            if not 0 < number < self.pages or self.overflow_budget < 0:
                raise InvalidContent(f"{self.path}: overflow chain leaves the file or loops")
            page = self._page(number)
            used = self._u16(page, 22)
            if page[25] != P_OVERFLOW or not 0 < used <= min(remaining, self.page_size - 26):
                raise InvalidContent(
                    f"{self.path}: page {number} is not the overflow page expected"
                )
            chunks.append(page[PAGE_HEADER : PAGE_HEADER + used])
            remaining -= used
            number = self._u32(page, 16)
        return b"".join(chunks)
