"""RPM header blobs, as the rpm databases store them.

A stored header is two big-endian 32-bit counts, ``il`` index entries and ``dl`` data
bytes, then the index (16 bytes per entry: tag, type, offset into the data, count)
and then the data store. Only the few tags a package listing needs are decoded.
"""

from __future__ import annotations

import struct

from scanner.errors import InvalidContent
from scanner.inventory.packages import OS_PACKAGE, Package

NAME, VERSION, RELEASE, EPOCH, SOURCERPM = 1000, 1001, 1002, 1003, 1044
_WANTED = {NAME, VERSION, RELEASE, EPOCH, SOURCERPM}

INT32, STRING, I18NSTRING = 4, 6, 9
_STRING_TYPES = {STRING, I18NSTRING}

# rpm's own limits on a header it will load.
MAX_ENTRIES = 0xFFFF
MAX_DATA = 256 * 1024 * 1024

_COUNTS = struct.Struct(">II")
_ENTRY = struct.Struct(">IIiI")

Tags = dict[int, str | int]


def parse_header(blob: bytes, where: str) -> Tags:
    """The NAME, VERSION, RELEASE, EPOCH and SOURCERPM tags present in ``blob``.

    ``where`` names the blob in error messages ("var/lib/rpm/Packages: record 3").
    """
    if len(blob) < _COUNTS.size:
        raise InvalidContent(f"{where}: rpm header shorter than its counts")
    entries, data_length = _COUNTS.unpack_from(blob)
    if entries > MAX_ENTRIES or data_length > MAX_DATA:
        raise InvalidContent(f"{where}: rpm header claims {entries} tags, {data_length} bytes")
    data_start = _COUNTS.size + entries * _ENTRY.size
    if data_start + data_length > len(blob):
        raise InvalidContent(f"{where}: rpm header truncated")
    data_end = data_start + data_length
    tags: Tags = {}
    for index in range(entries):
        tag, kind, offset, count = _ENTRY.unpack_from(blob, _COUNTS.size + index * _ENTRY.size)
        if tag not in _WANTED or tag in tags:
            continue
        if offset < 0 or offset >= data_length or count < 1:
            raise InvalidContent(f"{where}: rpm tag {tag} points outside the header data")
        start = data_start + offset
        if kind in _STRING_TYPES:
            end = blob.find(b"\0", start, data_end)
            if end < 0:
                raise InvalidContent(f"{where}: rpm tag {tag} string is not terminated")
            tags[tag] = blob[start:end].decode("utf-8", errors="replace")
        elif kind == INT32:
            if start + 4 > data_end:
                raise InvalidContent(f"{where}: rpm tag {tag} points outside the header data")
            tags[tag] = int.from_bytes(blob[start : start + 4], "big")
        else:
            raise InvalidContent(f"{where}: rpm tag {tag} has unexpected type {kind}")
    return tags


def source_of(source_rpm: str) -> tuple[str, str]:
    """(name, "version-release") from "name-version-release.src.rpm"; ("", "") if not so."""
    for suffix in (".src.rpm", ".nosrc.rpm"):
        if source_rpm.endswith(suffix):
            parts = source_rpm.removesuffix(suffix).rsplit("-", 2)
            if len(parts) == 3 and all(parts):
                return parts[0], f"{parts[1]}-{parts[2]}"
    return "", ""


def header_package(blob: bytes, path: str, where: str) -> Package | None:
    """The package a stored header describes; None for gpg-pubkey pseudo packages.

    The version is ``[epoch:]version-release``, the epoch only when the header has
    one. The source version carries the same epoch: a source package and the binary
    packages built from it share the spec's epoch, though the file name omits it.
    """
    tags = parse_header(blob, where)
    name, version, release = tags.get(NAME), tags.get(VERSION), tags.get(RELEASE)
    if not isinstance(name, str) or not isinstance(version, str) or not isinstance(release, str):
        raise InvalidContent(f"{where}: rpm header without NAME, VERSION or RELEASE strings")
    if name == "gpg-pubkey":  # an imported signing key, not software
        return None
    epoch = tags.get(EPOCH)
    prefix = f"{epoch}:" if isinstance(epoch, int) else ""
    source_rpm = tags.get(SOURCERPM)
    source_name, source_version = source_of(source_rpm) if isinstance(source_rpm, str) else ("", "")
    return Package(
        type=OS_PACKAGE,
        name=name,
        version=f"{prefix}{version}-{release}",
        source_name=source_name,
        source_version=f"{prefix}{source_version}" if source_version else "",
        path=path,
    )
