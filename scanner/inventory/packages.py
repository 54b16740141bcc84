"""What an image holds: packages, as each cataloger reports them.

A cataloger reads one file of an image (a package database, a metadata file, a
binary) and reports the packages it describes. Catalogers never see the whole
image: the tar reader (``scanner.inventory.tar``) hands them the files they ask for,
and the overlay merge (``scanner.inventory.overlay``) decides which of those files
the final image still has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Protocol

# Bump when any cataloger or the layer reader changes what it reports: every cached
# layer analysis of an older version is then redone on the next scan.
ANALYSER_VERSION = 1

# Package types, by the reference API's names.
OS_PACKAGE = "package"
PYTHON = "python"
NODEJS = "nodejs"
GO = "go"
JAR = "jar"


@dataclass(frozen=True)
class Package:
    type: str  # OS_PACKAGE, PYTHON, NODEJS, GO, JAR
    name: str
    version: str
    source_name: str = ""  # dpkg Source, apk origin, rpm source package
    source_version: str = ""
    path: str = ""  # the file it was found in, inside the image ("var/lib/dpkg/status")
    layer: str = ""  # digest of the layer that file came from (set by the merge)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Package:
        return cls(**data)


class Cataloger(Protocol):
    """Reads package files of one kind."""

    name: str

    def wants(self, path: str, head: bytes) -> bool:
        """Whether this file is one of ours. ``path`` is relative to the image root
        ("usr/lib/python3/dist-packages/x.dist-info/METADATA"); ``head`` holds the
        first bytes of the file (up to 512), for catalogers that sniff content."""

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """The packages this file describes. ``file`` is seekable. Raise
        ``scanner.errors.InvalidContent`` when the file is not what it should be."""
