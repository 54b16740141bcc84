"""Importing vulnerability data: OSV records from a file, a folder, a zip or a URL,
stored as new or newer, and the configured sources refreshed once per period for the
whole cluster. A change bumps the data's generation; :mod:`worker.rematch` then brings
the stored images' findings up to it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core import keys
from models import vuln_records
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
    """Start this period's refresh of the configured sources if no worker has yet."""
    period_ms = int(rt.settings.vulndb_refresh_seconds * 1000)
    locations = rt.settings.vulndb_locations
    if locations and rt.redis.set(keys.VULNDB_REFRESH, node, nx=True, px=period_ms):
        # A download can take minutes: not on the periodic pass's own thread.
        threading.Thread(target=refresh, args=(rt, locations), daemon=True).start()


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
