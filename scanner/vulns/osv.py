"""OSV records (schema 1.x): reading, validating and taking them apart.

Records come from a single JSON file, a folder of them, a zip archive laid out like the
osv.dev ``all.zip`` exports, or an http(s) URL serving any of those. A record that does
not follow the schema is reported with the reason and skipped, so one bad record never
stops an import. Nothing here touches a database.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
RANGE_TYPES = ("ECOSYSTEM", "SEMVER", "GIT")
DOWNLOAD_CHUNK = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"


class SourceUnavailable(Exception):
    """A path that does not exist, a URL that cannot be reached or answers an error."""


class InvalidRecord(ValueError):
    """A record that does not follow the OSV schema; the message says where and why."""


@dataclass(frozen=True)
class Event:
    kind: str  # one of EVENT_KINDS
    version: str


@dataclass(frozen=True)
class Range:
    type: str  # one of RANGE_TYPES
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Severity:
    type: str  # CVSS_V3, CVSS_V4, Ubuntu, ...
    score: str


@dataclass(frozen=True)
class Affected:
    ecosystem: str  # "" when the entry names no package (GIT-only entries)
    name: str
    ranges: tuple[Range, ...] = ()
    versions: tuple[str, ...] = ()
    severity: tuple[Severity, ...] = ()
    ecosystem_specific: dict[str, Any] = field(default_factory=dict)
    database_specific: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    type: str
    url: str


@dataclass(frozen=True)
class Record:
    id: str
    modified: datetime
    published: datetime | None = None
    withdrawn: datetime | None = None
    aliases: tuple[str, ...] = ()
    summary: str = ""
    details: str = ""
    severity: tuple[Severity, ...] = ()
    affected: tuple[Affected, ...] = ()
    references: tuple[Reference, ...] = ()
    database_specific: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ecosystems(self) -> set[str]:
        """The ecosystems of the packages this record names ("Debian:12", "PyPI")."""
        return {a.ecosystem for a in self.affected if a.ecosystem}


@dataclass(frozen=True)
class Invalid:
    """A record that was skipped: where it was read from and why."""

    where: str
    reason: str


# -- parsing ------------------------------------------------------------------------


def parse_record(data: Any) -> Record:
    """A validated :class:`Record` from decoded JSON; raises :class:`InvalidRecord`."""
    if not isinstance(data, dict):
        raise InvalidRecord("a record must be a JSON object")
    record_id = _text(data, "id", required=True)
    try:
        return Record(
            id=record_id,
            modified=_modified(data),
            published=_timestamp(data, "published"),
            withdrawn=_timestamp(data, "withdrawn"),
            aliases=tuple(_strings(data, "aliases")),
            summary=_text(data, "summary"),
            details=_text(data, "details"),
            severity=_severities(data.get("severity"), "severity"),
            affected=tuple(_affected(a, i) for i, a in enumerate(_list(data, "affected"))),
            references=_references(data.get("references")),
            database_specific=_object(data, "database_specific"),
            raw=data,
        )
    except InvalidRecord as exc:
        raise InvalidRecord(f"{record_id}: {exc}") from None


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 time as an aware UTC datetime (a zone-less value is taken as UTC)."""
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _text(data: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidRecord(f"{key!r} must be a non-empty string")
    return value


def _timestamp(data: dict[str, Any], key: str, *, required: bool = False) -> datetime | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{key!r} must be an RFC 3339 timestamp string")
    try:
        return parse_timestamp(value)
    except ValueError:
        raise InvalidRecord(f"{key!r} is not an RFC 3339 timestamp: {value[:40]!r}") from None


def _modified(data: dict[str, Any]) -> datetime:
    modified = _timestamp(data, "modified", required=True)
    assert modified is not None  # required: _timestamp raised otherwise
    return modified


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRecord(f"{key!r} must be a list")
    return value


def _strings(data: dict[str, Any], key: str) -> list[str]:
    values = _list(data, key)
    if not all(isinstance(v, str) for v in values):
        raise InvalidRecord(f"{key!r} must be a list of strings")
    return values


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRecord(f"{key!r} must be an object")
    return value


def _severities(value: Any, where: str) -> tuple[Severity, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRecord(f"{where!r} must be a list")
    found = []
    for item in value:
        if not isinstance(item, dict):
            raise InvalidRecord(f"{where!r} entries must be objects")
        kind, score = item.get("type"), item.get("score")
        if not isinstance(kind, str) or not isinstance(score, str):
            raise InvalidRecord(f"{where!r} entries need a string 'type' and 'score'")
        found.append(Severity(kind, score))
    return tuple(found)


def _affected(value: Any, index: int) -> Affected:
    where = f"affected[{index}]"
    if not isinstance(value, dict):
        raise InvalidRecord(f"{where} must be an object")
    ecosystem, name = _package(value.get("package"), where)
    ranges = value.get("ranges") or []
    if not isinstance(ranges, list):
        raise InvalidRecord(f"{where}.ranges must be a list")
    versions = value.get("versions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise InvalidRecord(f"{where}.versions must be a list of strings")
    return Affected(
        ecosystem=ecosystem,
        name=name,
        ranges=tuple(_range(r, f"{where}.ranges[{i}]") for i, r in enumerate(ranges)),
        versions=tuple(versions),
        severity=_severities(value.get("severity"), f"{where}.severity"),
        ecosystem_specific=_object(value, "ecosystem_specific"),
        database_specific=_object(value, "database_specific"),
    )


def _package(value: Any, where: str) -> tuple[str, str]:
    # The schema lets an entry that only has GIT ranges name no package.
    if value is None:
        return "", ""
    if not isinstance(value, dict):
        raise InvalidRecord(f"{where}.package must be an object")
    ecosystem, name = value.get("ecosystem"), value.get("name")
    if not isinstance(ecosystem, str) or not ecosystem or not isinstance(name, str) or not name:
        raise InvalidRecord(f"{where}.package needs a non-empty 'ecosystem' and 'name'")
    return ecosystem, name


def _range(value: Any, where: str) -> Range:
    if not isinstance(value, dict):
        raise InvalidRecord(f"{where} must be an object")
    kind = value.get("type")
    if kind not in RANGE_TYPES:
        raise InvalidRecord(f"{where}.type must be one of {', '.join(RANGE_TYPES)}")
    events = value.get("events")
    if not isinstance(events, list) or not events:
        raise InvalidRecord(f"{where}.events must be a non-empty list")
    parsed = tuple(_event(e, f"{where}.events[{i}]") for i, e in enumerate(events))
    if not any(e.kind == "introduced" for e in parsed):
        raise InvalidRecord(f"{where}.events has no 'introduced' event")
    return Range(kind, parsed)


def _event(value: Any, where: str) -> Event:
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidRecord(f"{where} must be an object with exactly one of {EVENT_KINDS}")
    [(kind, version)] = value.items()
    if kind not in EVENT_KINDS or not isinstance(version, str) or not version:
        raise InvalidRecord(f"{where} must be one of {EVENT_KINDS} with a version string")
    return Event(kind, version)


def _references(value: Any) -> tuple[Reference, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRecord("'references' must be a list")
    found = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise InvalidRecord("'references' entries need a string 'url'")
        found.append(Reference(str(item.get("type", "")), item["url"]))
    return tuple(found)


# -- reading --------------------------------------------------------------------------


def read_records(path: Path) -> Iterator[Record | Invalid]:
    """Every record in a JSON file, a folder of JSON files (recursively) or a zip archive,
    each as a :class:`Record` or, when it does not follow the schema, an :class:`Invalid`."""
    if path.is_dir():
        for file in sorted(path.rglob("*.json")):
            yield from _from_bytes(file.read_bytes(), str(file))
    elif _is_zip(path):
        yield from _from_zip(path)
    elif path.is_file():
        yield from _from_bytes(path.read_bytes(), str(path))
    else:
        raise SourceUnavailable(f"{path} does not exist")


def _is_zip(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == ZIP_MAGIC


def _from_zip(path: Path) -> Iterator[Record | Invalid]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise SourceUnavailable(f"{path} is not a readable zip archive: {exc}") from None
    with archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.endswith(".json"):
                continue
            yield from _from_bytes(archive.read(member), f"{path}!{member.filename}")


def _from_bytes(data: bytes, where: str) -> Iterator[Record | Invalid]:
    """One record (a JSON object) or several (a JSON array of objects)."""
    try:
        decoded = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        yield Invalid(where, f"not JSON: {exc}")
        return
    for item in decoded if isinstance(decoded, list) else [decoded]:
        try:
            yield parse_record(item)
        except InvalidRecord as exc:
            yield Invalid(where, str(exc))


# -- fetching ---------------------------------------------------------------------------


@dataclass
class Fetched:
    """What a location holds now: a local path to read, or ``None`` when an http(s)
    source answered "not modified" to the validators it was sent."""

    path: Path | None
    etag: str = ""
    last_modified: str = ""
    temporary: bool = False

    def close(self) -> None:
        if self.temporary and self.path is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Fetched:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def fetch(
    location: str, *, etag: str = "", last_modified: str = "", timeout: float = 60.0
) -> Fetched:
    """Make ``location`` readable as a local path. A URL is downloaded to a temporary
    file, unless the server says it has not changed since ``etag``/``last_modified``."""
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise SourceUnavailable(f"{location} does not exist")
        return Fetched(path)
    return _download(location, etag, last_modified, timeout)


def _download(url: str, etag: str, last_modified: str, timeout: float) -> Fetched:
    headers = {}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 304:
                return Fetched(None, etag, last_modified)
            if response.status_code != 200:
                raise SourceUnavailable(f"{url} answered HTTP {response.status_code}")
            path = _save(response)
            return Fetched(
                path,
                etag=response.headers.get("ETag", ""),
                last_modified=response.headers.get("Last-Modified", ""),
                temporary=True,
            )
    except requests.RequestException as exc:
        raise SourceUnavailable(f"{url} cannot be reached: {exc}") from None


def _save(response: requests.Response) -> Path:
    fd, name = tempfile.mkstemp(prefix="regscan-osv-", suffix=".download")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
