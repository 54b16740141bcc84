"""``regscan vulndb import``: load OSV data once, say what it held, start the re-match."""

from __future__ import annotations

from redis import Redis
from redis.exceptions import RedisError

from core.settings import Settings
from core.tasks import Publisher, make_celery
from models.db import make_engine, make_sessionmaker
from worker.vuln_import import ImportReport, import_location

SHOWN_INVALID = 20  # reasons printed; the count covers them all


def run_import(settings: Settings, location: str) -> int:
    """Import ``location``, print the report, and ask the workers to re-match stored
    images if anything changed. Raises ``scanner.vulns.osv.SourceUnavailable``."""
    engine = make_engine(settings.database_url)
    try:
        report = import_location(
            make_sessionmaker(engine),
            location,
            conditional=False,
            timeout=settings.vulndb_download_timeout,
        )
    finally:
        engine.dispose()
    print(describe(report))
    if report.changed:
        print(_start_rematch(settings))
    return 0


def describe(report: ImportReport) -> str:
    """The report for people: counts per ecosystem, skipped records, whether it changed."""
    c = report.counts
    lines = [
        f"imported {report.location}",
        f"  records read: {report.read} ({c.added} new, {c.updated} newer, "
        f"{c.unchanged} unchanged); withdrawn among them: {report.withdrawn}",
    ]
    if report.by_ecosystem:
        lines.append("  records per ecosystem:")
        width = max(len(e) for e in report.by_ecosystem)
        lines += [f"    {e:<{width}}  {n}" for e, n in sorted(report.by_ecosystem.items())]
    if report.invalid:
        lines.append(f"  skipped {len(report.invalid)} invalid records:")
        lines += [f"    {i.where}: {i.reason}" for i in report.invalid[:SHOWN_INVALID]]
        if len(report.invalid) > SHOWN_INVALID:
            lines.append(f"    ... and {len(report.invalid) - SHOWN_INVALID} more (see the log)")
    if report.changed:
        lines.append(f"  changed: yes (vulnerability data generation {report.generation})")
    else:
        lines.append("  changed: no (every record was already stored, as new or newer)")
    return "\n".join(lines)


def _start_rematch(settings: Settings) -> str:
    try:
        Redis.from_url(settings.redis_url, socket_connect_timeout=3).ping()
    except ValueError:
        return (
            f"  re-match: REGSCAN_REDIS_URL {settings.redis_url!r} is not a Redis URL "
            "(redis://HOST:PORT/DB); the workers re-match stored images on their next "
            "periodic pass"
        )
    except RedisError:
        return (
            f"  re-match: Redis at {settings.redis_url} did not answer; the workers "
            "re-match stored images on their next periodic pass"
        )
    Publisher(make_celery(settings)).rematch()
    return "  re-match: started; stored images are re-matched by the workers (no registry access)"
