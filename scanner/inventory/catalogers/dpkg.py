"""Debian packages: the dpkg status database and distroless ``status.d`` files.

Both are deb822 control files: stanzas of ``Field: value`` lines separated by blank
lines, a value continued on following lines that start with a space or a tab.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB, decode, read_bounded, text_lines
from scanner.inventory.packages import OS_PACKAGE, Package

STATUS = "var/lib/dpkg/status"
STATUS_DIR = "var/lib/dpkg/status.d/"
MAX_SIZE = 64 * MIB

# "glibc" or "glibc (2.36-9)": a binNMU keeps its source's version in parentheses.
_SOURCE = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^()\s]+)\))?$")

Stanza = dict[str, str]


def stanzas(path: str, text: str) -> Iterator[tuple[int, Stanza]]:
    """(first line number, fields) of each stanza; field names are lower-cased.

    A line that is neither blank, a continuation nor ``Name: value`` is an error.
    """
    fields: Stanza = {}
    start = 0
    current = ""
    for number, line in text_lines(text):
        if not line.strip():
            if fields:
                yield start, fields
            fields, current = {}, ""
            continue
        if line[0] in " \t":
            if not current:
                raise InvalidContent(f"{path}: line {number}: continuation line outside a field")
            fields[current] += "\n" + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or " " in name:
            raise InvalidContent(f"{path}: line {number}: not a field: {line[:80]!r}")
        if not fields:
            start = number
        current = name.lower()
        fields[current] = value.strip()
    if fields:
        yield start, fields


def _installed(fields: Stanza, default: bool) -> bool:
    # Status is "want flag state"; only the state says whether the files are there.
    status = fields.get("status")
    if status is None:
        return default
    words = status.split()
    return len(words) == 3 and words[2] == "installed"


def package(path: str, line: int, fields: Stanza) -> Package:
    """The package one installed stanza describes."""
    name = fields.get("package", "")
    version = fields.get("version", "")
    if not name or not version:
        raise InvalidContent(f"{path}: line {line}: stanza without Package or Version")
    source_name, source_version = name, version  # Debian Policy: Source defaults to these
    if "source" in fields:
        match = _SOURCE.match(fields["source"])
        if match is None:
            raise InvalidContent(f"{path}: line {line}: bad Source: {fields['source'][:80]!r}")
        source_name = match["name"]
        source_version = match["version"] or version
    return Package(
        type=OS_PACKAGE,
        name=name,
        version=version,
        source_name=source_name,
        source_version=source_version,
        path=path,
    )


class DpkgCataloger:
    """``var/lib/dpkg/status`` and distroless ``var/lib/dpkg/status.d/*``."""

    name = "dpkg"

    def wants(self, path: str, head: bytes) -> bool:
        """The status file, or a stanza file directly inside status.d."""
        if path == STATUS:
            return True
        if not path.startswith(STATUS_DIR):
            return False
        rest = path[len(STATUS_DIR) :]
        return bool(rest) and "/" not in rest and not rest.endswith(".md5sums")

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """Installed packages; status.d stanzas carry no Status and count as installed."""
        text = decode(read_bounded(path, file, MAX_SIZE))
        in_status_d = path != STATUS
        return [
            package(path, line, fields)
            for line, fields in stanzas(path, text)
            if _installed(fields, default=in_status_d)
        ]
