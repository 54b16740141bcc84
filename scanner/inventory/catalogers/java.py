"""Java archives: Maven coordinates from ``META-INF/maven/**/pom.properties`` in JAR,
WAR and EAR files, and in the archives nested inside them (a WAR's WEB-INF/lib, a
Spring Boot JAR's BOOT-INF/lib).

Nesting is bounded: three levels of archives, 64 MiB per nested archive (larger ones
are skipped), and per top-level file a total of nested bytes and nested archives.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB
from scanner.inventory.packages import JAR, Package

EXTENSIONS = (".jar", ".war", ".ear")
ZIP_MAGIC = b"PK"

MAX_DEPTH = 3  # the file itself is depth 1
MAX_NESTED_SIZE = 64 * MIB
MAX_NESTED_TOTAL = 1024 * MIB
MAX_NESTED_COUNT = 10_000
MAX_ENTRIES = 500_000
MAX_PROPERTIES = MIB
SPOOL_IN_MEMORY = 8 * MIB

# What zipfile raises on archives it cannot read: bad structure, bad compressed
# streams, encrypted or unsupported entries.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


@dataclass
class _Budget:
    """What is left of the per-file allowance for nested archives."""

    nested_bytes: int = MAX_NESTED_TOTAL
    nested_count: int = MAX_NESTED_COUNT


def parse_properties(text: str) -> dict[str, str]:
    """Keys and values of a Java properties file, for the simple lines Maven writes."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            key, _, value = line.partition(" ")
        else:
            key, value = line[:cut], line[cut + 1 :]
        found.setdefault(key.strip(), value.strip())
    return found


def _is_pom_properties(name: str) -> bool:
    return name.startswith("META-INF/maven/") and name.endswith("/pom.properties")


class JavaCataloger:
    """JAR, WAR and EAR files."""

    name = "java"

    def wants(self, path: str, head: bytes) -> bool:
        """An archive extension and zip content."""
        return path.lower().endswith(EXTENSIONS) and head.startswith(ZIP_MAGIC)

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """One package per distinct Maven coordinate, nested archives included."""
        found: list[Package] = []
        _archive(path, path, file, 1, _Budget(), found)
        return list(dict.fromkeys(found))


def _archive(
    path: str, where: str, file: IO[bytes], depth: int, budget: _Budget, found: list[Package]
) -> None:
    """Add the packages of one archive; ``where`` names it ("app.war!WEB-INF/lib/x.jar")."""
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ENTRIES:
                raise InvalidContent(f"{where}: more than {MAX_ENTRIES} zip entries")
            for entry in entries:
                if entry.is_dir():
                    continue
                if _is_pom_properties(entry.filename):
                    package = _pom_package(archive, entry, path)
                    if package is not None:
                        found.append(package)
                elif entry.filename.lower().endswith(EXTENSIONS) and depth < MAX_DEPTH:
                    _nested(path, where, archive, entry, depth, budget, found)
    except _ZIP_ERRORS as error:
        raise InvalidContent(f"{where}: unreadable zip archive: {error}") from error


def _pom_package(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, path: str) -> Package | None:
    if entry.file_size > MAX_PROPERTIES:
        return None
    with archive.open(entry) as stream:
        text = stream.read(MAX_PROPERTIES).decode("utf-8", errors="replace")
    properties = parse_properties(text)
    group, artifact = properties.get("groupId", ""), properties.get("artifactId", "")
    version = properties.get("version", "")
    if not group or not artifact or not version:
        return None
    return Package(type=JAR, name=f"{group}:{artifact}", version=version, path=path)


def _nested(
    path: str,
    where: str,
    archive: zipfile.ZipFile,
    entry: zipfile.ZipInfo,
    depth: int,
    budget: _Budget,
    found: list[Package],
) -> None:
    if entry.file_size > MAX_NESTED_SIZE:
        return  # too large to expand here; its coordinates go unreported
    budget.nested_count -= 1
    budget.nested_bytes -= entry.file_size
    if budget.nested_count < 0 or budget.nested_bytes < 0:
        raise InvalidContent(f"{path}: nested archives expand to too many bytes or files")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
        with archive.open(entry) as stream:
            while chunk := stream.read(MIB):
                copy.write(chunk)
        copy.seek(0)
        if copy.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
            return  # named like an archive but is not one, as the top-level check skips
        copy.seek(0)
        _archive(path, f"{where}!{entry.filename}", copy, depth + 1, budget, found)
