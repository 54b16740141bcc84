"""Helpers shared by the catalogers: bounded reads and control-file stanzas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from scanner.errors import InvalidContent

MIB = 1024 * 1024


def read_bounded(path: str, file: BinaryIO, limit: int) -> bytes:
    """The whole of ``file``; InvalidContent naming ``path`` when it holds more than ``limit``."""
    file.seek(0)
    data = file.read(limit + 1)
    if len(data) > limit:
        raise InvalidContent(f"{path}: larger than {limit} bytes")
    return data


def decode(data: bytes) -> str:
    """Text of a metadata file: UTF-8, with undecodable bytes replaced rather than fatal."""
    return data.decode("utf-8", errors="replace")


def text_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) pairs, split on newlines only.

    ``str.splitlines`` would also split on form feeds and Unicode separators, which
    control files treat as ordinary characters, and would shift the line numbers
    that error messages quote.
    """
    for number, line in enumerate(text.split("\n"), 1):
        yield number, line.removesuffix("\r")
