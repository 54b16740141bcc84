"""Alpine packages: the apk installed database, ``lib/apk/db/installed``.

One stanza per package, separated by blank lines; each line is a one-letter key, a
colon and the value ("P:musl"). P is the name, V the version, o the origin (the
source package the binary was built from).
"""

from __future__ import annotations

from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB, decode, read_bounded, text_lines
from scanner.inventory.packages import OS_PACKAGE, Package

INSTALLED = "lib/apk/db/installed"
MAX_SIZE = 128 * MIB  # the database lists every file of every package


def _package(path: str, line: int, fields: dict[str, str]) -> Package:
    name, version = fields.get("P", ""), fields.get("V", "")
    if not name or not version:
        raise InvalidContent(f"{path}: line {line}: entry without P: or V:")
    return Package(
        type=OS_PACKAGE,
        name=name,
        version=version,
        # An origin package shares its subpackages' version.
        source_name=fields.get("o") or name,
        source_version=version,
        path=path,
    )


class ApkCataloger:
    """``lib/apk/db/installed``."""

    name = "apk"

    def wants(self, path: str, head: bytes) -> bool:
        """Only the installed database."""
        return path == INSTALLED

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """One package per stanza, in file order."""
        text = decode(read_bounded(path, file, MAX_SIZE))
        packages: list[Package] = []
        fields: dict[str, str] = {}
        start = 0
        for number, line in text_lines(text):
            if not line.strip():
                if fields:
                    packages.append(_package(path, start, fields))
                fields = {}
                continue
            if len(line) < 2 or line[1] != ":":
                raise InvalidContent(f"{path}: line {number}: not a key:value line: {line[:80]!r}")
            if not fields:
                start = number
            # Keys such as R: (file names) repeat; only the first of P, V and o matter.
            fields.setdefault(line[0], line[2:].strip())
        if fields:
            packages.append(_package(path, start, fields))
        return packages
