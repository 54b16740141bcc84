"""Python distributions: ``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO`` and single-file
``*.egg-info``.

All three are core metadata: RFC 822 style headers, then a blank line and an optional
description body. Only the Name and Version headers are read.
"""

from __future__ import annotations

from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB, decode, text_lines
from scanner.inventory.packages import PYTHON, Package

# Some projects put whole licence texts in a header; a megabyte still bounds it.
MAX_HEADERS = MIB


def headers(text: str) -> dict[str, str]:
    """First value of each header, names lower-cased, up to the first blank line.

    Lines that are neither headers nor continuations are skipped: old tools wrote
    unindented description lines into the header block.
    """
    found: dict[str, str] = {}
    current = ""
    for _, line in text_lines(text):
        if not line.strip():
            break
        if line[0] in " \t":
            if current:
                found[current] += "\n" + line.strip()
            continue
        name, colon, value = line.partition(":")
        current = ""
        if colon and name.strip() and name.strip().lower() not in found:
            current = name.strip().lower()
            found[current] = value.strip()
    return found


class PythonCataloger:
    """Installed distributions' core metadata files."""

    name = "python"

    def wants(self, path: str, head: bytes) -> bool:
        """METADATA in a .dist-info directory, PKG-INFO in .egg-info, or a .egg-info file."""
        return (
            path.endswith(".dist-info/METADATA")
            or path.endswith(".egg-info/PKG-INFO")
            or path.endswith(".egg-info")
        )

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """One package: the Name and Version headers, stripped."""
        file.seek(0)
        text = decode(file.read(MAX_HEADERS))
        found = headers(text)
        name, version = found.get("name", ""), found.get("version", "")
        if not name or not version:
            raise InvalidContent(f"{path}: core metadata without Name or Version")
        return [Package(type=PYTHON, name=name, version=version, path=path)]
