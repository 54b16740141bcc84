"""Importing vulnerability data: OSV records from a file, a folder, a zip or a URL,
stored as new or newer, and the sources refreshed once per period for the whole
cluster. A change bumps the data's generation; :mod:`worker.rematch` then brings the
stored images' findings up to it.

The sources are the configured ones (``REGSCAN_VULNDB_SOURCES``), or by default the
OSV exports of the ecosystems the stored images hold: ``<REGSCAN_VULNDB_OSV_URL>/
<ecosystem>/all.zip``, one per ecosystem, so a fresh install finds vulnerabilities
without configuration. A source never fetched (an image of a new ecosystem was just
stored) or whose last refresh failed is tried again within a pass and then every
``vulndb_retry_seconds``, not only once per period; a failing source keeps the records
it gave before.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker

from core import keys
from models import fleet, vuln_records
from models.db import transaction
from scanner.vulns import matching, osv
from worker.runtime import Runtime

log = logging.getLogger(__name__)
IMPORT_CHUNK = 500  # records written per transaction, so SQLite writers are not held long


@dataclass
class ImportReport:
    """What one import read and changed."""

    location: str
    by_ecosystem: Counter[str] = field(default_factory=Counter)
    invalid: list[osv.Invalid] = field(default_factory=list)
    counts: vuln_records.StoreCounts = field(default_factory=vuln_records.StoreCounts)
    withdrawn: int = 0
    not_modified: bool = False
    generation: int | None = None  # the new generation, when anything changed

    @property
    def changed(self) -> bool:
        return self.counts.changed > 0

    @property
    def read(self) -> int:
        return self.counts.added + self.counts.updated + self.counts.unchanged


def source_location(location: str) -> str:
    """How a location is recorded: URLs as given, paths made absolute."""
    return location if osv.is_url(location) else str(Path(location).expanduser().resolve())


def import_location(
    sessions: sessionmaker[Session], location: str, *, conditional: bool, timeout: float = 60.0
) -> ImportReport:
    """Read every record at ``location`` and store the new and newer ones. With
    ``conditional``, an http(s) source is asked for changes since the last refresh only.

    Raises ``osv.SourceUnavailable`` (also recorded on the source) when it cannot be read.
    """
    location = source_location(location)
    with transaction(sessions) as session:
        source = vuln_records.source_for(session, location)
        source_id, etag, last_modified = source.id, source.etag, source.last_modified
    report = ImportReport(location)
    try:
        validators = {"etag": etag, "last_modified": last_modified} if conditional else {}
        with osv.fetch(location, timeout=timeout, **validators) as fetched:
            if fetched.path is None:
                report.not_modified = True
            else:
                _store_all(sessions, osv.read_records(fetched.path), source_id, report)
    except (osv.SourceUnavailable, OSError) as exc:
        with transaction(sessions) as session:
            vuln_records.record_refresh(session, source_id, error=str(exc))
        if isinstance(exc, osv.SourceUnavailable):
            raise
        raise osv.SourceUnavailable(f"{location} cannot be read: {exc}") from None
    _finish(sessions, source_id, fetched, report)
    return report


def _store_all(
    sessions: sessionmaker[Session],
    items: Iterable[osv.Record | osv.Invalid],
    source_id: int,
    report: ImportReport,
) -> None:
    for chunk in _chunked(items, IMPORT_CHUNK):
        rows = []
        for item in chunk:
            if isinstance(item, osv.Invalid):
                log.warning("skipped invalid OSV record in %s: %s", item.where, item.reason)
                report.invalid.append(item)
                continue
            report.by_ecosystem.update(item.ecosystems or {"(none)"})
            report.withdrawn += item.withdrawn is not None
            rows.append(record_row(item))
        with transaction(sessions) as session:
            counts = vuln_records.store_records(session, rows, source_id)
        report.counts.added += counts.added
        report.counts.updated += counts.updated
        report.counts.unchanged += counts.unchanged


def _finish(
    sessions: sessionmaker[Session], source_id: int, fetched: osv.Fetched, report: ImportReport
) -> None:
    with transaction(sessions) as session:
        if report.not_modified:
            vuln_records.record_refresh(session, source_id)
        else:
            vuln_records.record_refresh(
                session,
                source_id,
                etag=fetched.etag,
                last_modified=fetched.last_modified,
                records=report.read,
            )
        if report.changed:
            report.generation = vuln_records.bump_generation(session)


def record_row(record: osv.Record) -> vuln_records.RecordRow:
    """A record as stored, indexed by the (ecosystem, name) pairs matching looks up."""
    packages = {
        (a.ecosystem, matching.normalise_name(a.ecosystem, a.name))
        for a in record.affected
        if a.ecosystem
    }
    return vuln_records.RecordRow(
        id=record.id,
        modified=record.modified,
        published=record.published,
        withdrawn=record.withdrawn,
        aliases=list(record.aliases),
        record=record.raw,
        packages=packages,
    )


def _chunked(items: Iterable[osv.Record | osv.Invalid], size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def refresh_if_due(rt: Runtime, node: str) -> None:
    """Start this period's refresh of the sources if no worker has yet; else fetch the
    sources that are behind (never fetched, or failing) if no worker is already."""
    locations = rt.settings.vulndb_locations or default_locations(rt)
    if not locations:
        return
    period_ms = int(rt.settings.vulndb_refresh_seconds * 1000)
    if rt.redis.set(keys.VULNDB_REFRESH, node, nx=True, px=period_ms):
        _in_background(rt, locations)
        return
    retry = max(1, int(rt.settings.vulndb_retry_seconds))
    claimed = [
        location
        for location in _behind(rt, locations)
        if rt.redis.set(keys.vulndb_retry(location), node, nx=True, ex=retry)
    ]
    if claimed:
        _in_background(rt, claimed)


def _in_background(rt: Runtime, locations: list[str]) -> None:
    # A download can take minutes: not on the periodic pass's own thread.
    threading.Thread(target=refresh, args=(rt, locations), daemon=True).start()


def _behind(rt: Runtime, locations: list[str]) -> list[str]:
    """The locations never refreshed, or whose last refresh failed."""
    with rt.sessions() as session:
        known = {
            source.location: source
            for source in fleet.vuln_freshness(session).sources
            if source.location in locations
        }
    return [
        location
        for location in locations
        if location not in known
        or known[location].refreshed_at is None
        or known[location].last_error
    ]


def default_locations(rt: Runtime) -> list[str]:
    """The OSV exports of the ecosystems the stored images hold, when no source is
    configured; none when ``vulndb_osv_url`` is empty."""
    base = rt.settings.vulndb_osv_url.rstrip("/")
    if not base:
        return []
    with rt.sessions() as session:
        releases = fleet.os_releases(session)
        types = fleet.package_types(session)
    return [f"{base}/{quote(name)}/all.zip" for name in sorted(export_names(releases, types))]


def export_names(releases: Iterable[tuple[str, str, str]], package_types: set[str]) -> set[str]:
    """The OSV export (top-level ecosystem: ``Debian``, ``Rocky Linux``, ``PyPI``) of
    each OS release (os-release ID, VERSION_ID, PRETTY_NAME) and package type held."""
    names: set[str] = set()
    if "package" in package_types:
        for distro, version, pretty in releases:
            image_os = matching.ImageOS(distro, version, pretty)
            names.update(eco.split(":")[0] for eco in matching.os_ecosystems(image_os))
    names.update(
        matching.LANGUAGE_ECOSYSTEMS[kind]
        for kind in package_types
        if kind in matching.LANGUAGE_ECOSYSTEMS
    )
    return names


def refresh(rt: Runtime, locations: list[str]) -> None:
    """Import each configured source that changed since its last refresh."""
    changed = False
    for location in locations:
        try:
            report = import_location(
                rt.sessions,
                location,
                conditional=True,
                timeout=rt.settings.vulndb_download_timeout,
            )
        except osv.SourceUnavailable as exc:
            log.error("vulnerability data source %s: %s", location, exc)
            continue
        except Exception:
            log.exception("vulnerability data source %s: refresh failed", location)
            continue
        log.info("vulnerability data source %s: %s", location, _outcome(report))
        changed = changed or report.changed
    if changed:
        rt.publisher.rematch()


def _outcome(report: ImportReport) -> str:
    if report.not_modified:
        return "not modified"
    return f"{report.read} records read, {report.counts.changed} new or newer"
