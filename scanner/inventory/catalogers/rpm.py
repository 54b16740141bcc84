"""RPM packages: the SQLite rpmdb (rpm 4.16 and later) and the Berkeley DB ``Packages``.

Both store one header blob per installed package; ``rpmheader`` decodes them.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, Literal

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB
from scanner.inventory.catalogers.bdb import HashFile
from scanner.inventory.catalogers.rpmheader import header_package
from scanner.inventory.packages import Package

SQLITE_PATHS = {"var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite"}
BDB_PATHS = {"var/lib/rpm/Packages", "usr/lib/sysimage/rpm/Packages"}
SQLITE_MAGIC = b"SQLite format 3\0"

MAX_SQLITE = 4096 * MIB
# SQLite calls the progress handler every _STEPS virtual machine instructions; a
# database that needs more than _MAX_CALLS of those for one table scan is hostile.
_STEPS = 10_000
_MAX_CALLS = 100_000


class RpmCataloger:
    """rpmdb.sqlite and Packages, told apart by their first bytes."""

    name = "rpm"

    def wants(self, path: str, head: bytes) -> bool:
        """The rpm databases at their usual places."""
        return path in SQLITE_PATHS or path in BDB_PATHS

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """Installed packages, in database order, without gpg-pubkey entries."""
        file.seek(0)
        is_sqlite = file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
        blobs = _sqlite_blobs(path, file) if is_sqlite else _bdb_blobs(path, file)
        packages = []
        for record, blob in blobs:
            package = header_package(blob, path, f"{path}: record {record}")
            if package is not None:
                packages.append(package)
        return packages


def _bdb_blobs(path: str, file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    database = HashFile(path, file)
    # Header numbers are in the writer's byte order, like the rest of the file.
    byteorder: Literal["little", "big"] = "little" if database.order == "<" else "big"
    for key, value in database.items():
        record = int.from_bytes(key, byteorder) if len(key) == 4 else -1
        # Record 0 holds rpm's next header number, not a header.
        if record != 0:
            yield record, value


def _sqlite_blobs(path: str, file: BinaryIO) -> Iterator[tuple[int, bytes]]:
    # sqlite3 opens only named files, and ``file`` may be an in-memory spool.
    with tempfile.TemporaryDirectory(prefix="regscan-rpmdb-") as directory:
        copy = os.path.join(directory, "rpmdb.sqlite")
        with open(copy, "wb") as out:
            file.seek(0)
            copied = _copy_bounded(file, out, MAX_SQLITE)
        if copied > MAX_SQLITE:
            raise InvalidContent(f"{path}: larger than {MAX_SQLITE} bytes")
        yield from _read_packages_table(path, copy)


def _copy_bounded(source: BinaryIO, target: BinaryIO, limit: int) -> int:
    copied = 0
    while copied <= limit:
        chunk = source.read(MIB)
        if not chunk:
            break
        target.write(chunk)
        copied += len(chunk)
    return copied


def _read_packages_table(path: str, copy: str) -> Iterator[tuple[int, bytes]]:
    # immutable=1: the image's -wal and -shm files are not beside the copy, and
    # nothing may be written next to it either.
    try:
        connection = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as error:
        raise InvalidContent(f"{path}: cannot open as SQLite: {error}") from error
    calls = 0

    def progress() -> int:
        nonlocal calls
        calls += 1
        return 1 if calls > _MAX_CALLS else 0

    try:
        connection.set_progress_handler(progress, _STEPS)
        connection.execute("PRAGMA trusted_schema = OFF")
        kind = connection.execute("SELECT type FROM sqlite_master WHERE name = 'Packages'")
        if kind.fetchone() != ("table",):
            raise InvalidContent(f"{path}: no Packages table")
        for record, blob in connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum"):
            if not isinstance(blob, bytes):
                raise InvalidContent(f"{path}: record {record} is not a blob")
            yield record, blob
    except (sqlite3.Error, UnicodeDecodeError) as error:
        # SQLite's messages about a corrupt schema quote its bytes, which Python may
        # fail to decode while raising.
        raise InvalidContent(f"{path}: cannot read the Packages table: {error}") from error
    finally:
        connection.close()
