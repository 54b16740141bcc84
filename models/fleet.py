"""Read-only views across the fleet: what the dashboard, ``/metrics`` and the default
vulnerability data ask of the stored jobs, results and findings.

The *current* images are those a latest result points at (one per tagged platform
image); findings are always today's, re-matched whenever the data changes. Nothing here
writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.orm import Session

from models.findings import ImageTarget
from models.images import Image, ImagePackage, matched_before
from models.jobs import JobKind, JobStatus, ScanJob
from models.package_versions import PackageFinding
from models.results import ScanResult
from models.vuln_records import (
    VulnDbState,
    VulnRecord,
    VulnSource,
    current_generation,
    findings_generation,
)

SEVERITIES = ("critical", "high", "medium", "low")
UNKNOWN = "unknown"
# A tagged platform image: the key of a latest result.
ResultKey = tuple[str, str, str, str]

_RANK = case(
    {name: n for n, name in enumerate(SEVERITIES)},
    value=PackageFinding.severity,
    else_=len(SEVERITIES),
)
# An image's counts by severity, kept on its row (models.findings).
_COUNTS = (Image.vulns_critical, Image.vulns_high, Image.vulns_medium, Image.vulns_low)


def severity_name(value: str) -> str:
    """A finding's severity as the fleet views group it: one of SEVERITIES or unknown."""
    return value if value in SEVERITIES else UNKNOWN


# -- jobs ---------------------------------------------------------------------------------


def job_counts(session: Session) -> list[tuple[str, str, int]]:
    """(kind, status, number of jobs) for every pair that has jobs."""
    stmt = select(ScanJob.kind, ScanJob.status, func.count()).group_by(ScanJob.kind, ScanJob.status)
    return [(kind.value, status.value, n) for kind, status, n in session.execute(stmt)]


@dataclass(frozen=True)
class Backlog:
    """A team's on-demand scans waiting or running, and since when the oldest waits."""

    team: str
    queued: int
    running: int
    oldest_queued: datetime | None


def ondemand_backlog(session: Session) -> list[Backlog]:
    """Teams with on-demand scans waiting or running, the longest backlog first."""
    queued = ScanJob.status == JobStatus.QUEUED
    stmt = (
        select(
            ScanJob.team,
            func.sum(case((queued, 1), else_=0)),
            func.sum(case((ScanJob.status == JobStatus.RUNNING, 1), else_=0)),
            func.min(case((queued, ScanJob.created_at), else_=None)),
        )
        .where(
            ScanJob.kind == JobKind.ON_DEMAND,
            ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
        )
        .group_by(ScanJob.team)
    )
    found = [
        Backlog(team, int(q or 0), int(r or 0), _aware(oldest))
        for team, q, r, oldest in session.execute(stmt)
    ]
    return sorted(found, key=lambda b: (-(b.queued + b.running), b.team))


def failed_jobs(session: Session, since: datetime, limit: int = 10) -> Sequence[ScanJob]:
    """Jobs that ended failed since ``since``, newest first."""
    stmt = (
        select(ScanJob)
        .where(ScanJob.status == JobStatus.FAILED, ScanJob.finished_at >= since)
        .order_by(ScanJob.id.desc())
        .limit(limit)
    )
    return session.scalars(stmt).all()


# -- current images -----------------------------------------------------------------------


def current_image_ids() -> Select[int | None]:
    """Ids of the images a latest result points at."""
    return select(ScanResult.image_id).where(
        ScanResult.is_latest.is_(True), ScanResult.image_id.is_not(None)
    )


def failing_images(session: Session, limit: int = 10) -> Sequence[ScanResult]:
    """Tagged images whose latest scan failed, most recent first."""
    stmt = (
        select(ScanResult)
        .where(ScanResult.is_latest.is_(True), ScanResult.err != "")
        .order_by(ScanResult.scanned_at.desc())
        .limit(limit)
    )
    return session.scalars(stmt).all()


def current_results(
    session: Session, search: str, *, offset: int, limit: int
) -> tuple[Sequence[tuple[ScanResult, Image | None]], int]:
    """One page of the latest results whose name contains ``search``, by name."""
    stmt = select(ScanResult).where(ScanResult.is_latest.is_(True))
    if search:
        name = ScanResult.registry_host + "/" + ScanResult.repository + ":" + ScanResult.tag
        stmt = stmt.where(name.contains(search, autoescape=True))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = (
        stmt.add_columns(Image)
        .outerjoin(Image, ScanResult.image_id == Image.id)
        .order_by(
            ScanResult.registry_host, ScanResult.repository, ScanResult.tag, ScanResult.platform
        )
        .offset(offset)
        .limit(limit)
    )
    return [(r, i) for r, i in session.execute(page)], total


def results_of_image(session: Session, image_id: int) -> Sequence[ScanResult]:
    """The latest results pointing at an image: the tags it is current for."""
    stmt = select(ScanResult).where(ScanResult.is_latest.is_(True), ScanResult.image_id == image_id)
    return session.scalars(stmt.order_by(ScanResult.tag)).all()


def scans_of_image(
    session: Session, image_id: int, limit: int = 20
) -> Sequence[tuple[ScanResult, ScanJob]]:
    """The scans that stored a result for an image, newest first, with their jobs."""
    stmt = (
        select(ScanResult, ScanJob)
        .join(ScanJob, ScanJob.id == ScanResult.job_id)
        .where(ScanResult.image_id == image_id)
        .order_by(ScanResult.id.desc())
        .limit(limit)
    )
    return [(r, j) for r, j in session.execute(stmt)]


# -- findings across the fleet --------------------------------------------------------------


def severity_totals(session: Session) -> dict[str, int]:
    """Findings of the current images by severity (unknown included)."""
    sums = [func.coalesce(func.sum(c), 0) for c in (*_COUNTS, Image.vulns_total)]
    stmt = select(*sums).where(Image.id.in_(current_image_ids()))
    *by_severity, total = (int(n) for n in session.execute(stmt).one())
    return {**dict(zip(SEVERITIES, by_severity, strict=True)), UNKNOWN: total - sum(by_severity)}


@dataclass(frozen=True)
class Widespread:
    vuln_id: str
    severity: str  # the highest any of its findings has
    images: int


def widespread(session: Session, limit: int = 10) -> list[Widespread]:
    """The vulnerabilities found in the most current images."""
    images = func.count(distinct(ImageTarget.image_id))
    stmt = (
        select(PackageFinding.vuln_id, func.min(_RANK), images)
        .join(ImageTarget, ImageTarget.package_version_id == PackageFinding.package_version_id)
        .where(ImageTarget.image_id.in_(current_image_ids()))
        .group_by(PackageFinding.vuln_id)
        .order_by(images.desc(), func.min(_RANK), PackageFinding.vuln_id)
        .limit(limit)
    )
    return [
        Widespread(vuln_id, _severity_of_rank(rank), n)
        for vuln_id, rank, n in session.execute(stmt)
    ]


def severity_counts(
    session: Session, image_ids: Sequence[int] | None = None
) -> dict[int, Counter[str]]:
    """Findings per image and severity: of ``image_ids``, or of every image with any."""
    stmt = select(Image.id, *_COUNTS, Image.vulns_total).where(Image.vulns_total > 0)
    if image_ids is not None:
        if not image_ids:
            return {}
        stmt = stmt.where(Image.id.in_(set(image_ids)))
    counts: dict[int, Counter[str]] = {}
    for image_id, *by_severity, total in session.execute(stmt):
        found = Counter(dict(zip(SEVERITIES, by_severity, strict=True)))
        found[UNKNOWN] = total - sum(by_severity)
        counts[image_id] = +found  # severities with no finding left out
    return counts


def most_vulnerable(session: Session, limit: int = 10) -> list[tuple[int, Counter[str]]]:
    """Current images with the most severe findings: (image id, counts by severity)."""
    stmt = (
        select(Image.id)
        .where(Image.id.in_(current_image_ids()), Image.vulns_total > 0)
        .order_by(*(c.desc() for c in _COUNTS), Image.vulns_total.desc(), Image.id)
        .limit(limit)
    )
    ids = list(session.scalars(stmt))
    counts = severity_counts(session, ids)
    return [(image_id, counts[image_id]) for image_id in ids]


def names_of(session: Session, image_ids: Sequence[int]) -> dict[int, ScanResult]:
    """For each image, one latest result naming it (its first tag)."""
    if not image_ids:
        return {}
    stmt = (
        select(ScanResult)
        .where(ScanResult.is_latest.is_(True), ScanResult.image_id.in_(set(image_ids)))
        .order_by(ScanResult.id)
    )
    found: dict[int, ScanResult] = {}
    for result in session.scalars(stmt):
        if result.image_id is not None:
            found.setdefault(result.image_id, result)
    return found


def results_history(
    session: Session, start: datetime
) -> tuple[dict[ResultKey, int], list[tuple[datetime, ResultKey, int]]]:
    """What each tagged platform image pointed at over time: the image of each one's
    last successful scan before ``start``, and every successful scan since, in order."""
    key_columns = (
        ScanResult.registry_host,
        ScanResult.repository,
        ScanResult.tag,
        ScanResult.platform,
    )
    succeeded = ScanResult.image_id.is_not(None)
    last_before = (
        select(func.max(ScanResult.id))
        .where(succeeded, ScanResult.scanned_at < start)
        .group_by(*key_columns)
    )
    baseline = {
        (host, repo, tag, platform): image_id
        for host, repo, tag, platform, image_id in session.execute(
            select(*key_columns, ScanResult.image_id).where(ScanResult.id.in_(last_before))
        )
        if image_id is not None
    }
    since = select(ScanResult.scanned_at, *key_columns, ScanResult.image_id).where(
        succeeded, ScanResult.scanned_at >= start
    )
    changes = [
        (_aware(at) or start, (host, repo, tag, platform), image_id)
        for at, host, repo, tag, platform, image_id in session.execute(
            since.order_by(ScanResult.scanned_at)
        )
        if image_id is not None
    ]
    return baseline, changes


def findings_by_day(session: Session, days: int, now: datetime) -> list[tuple[date, Counter[str]]]:
    """Findings of the fleet at the end of each of the last ``days`` days (today last):
    each tagged platform image counted with the image its last successful scan of that
    day or before found. Findings are today's (re-matched as the data changed), so the
    line shows how the images changed, not how the data grew."""
    start = datetime.combine(now.date(), time(), UTC) - timedelta(days=days - 1)
    baseline, changes = results_history(session, start)
    per_image = severity_counts(session)
    current = dict(baseline)
    pending = iter(changes)
    upcoming = next(pending, None)
    out: list[tuple[date, Counter[str]]] = []
    for n in range(days):
        day_end = start + timedelta(days=n + 1)
        while upcoming is not None and upcoming[0] < day_end:
            current[upcoming[1]] = upcoming[2]
            upcoming = next(pending, None)
        total: Counter[str] = Counter()
        for image_id in current.values():
            total.update(per_image.get(image_id, {}))
        out.append(((start + timedelta(days=n)).date(), total))
    return out


# -- what the stored images hold ------------------------------------------------------------


def os_releases(session: Session) -> list[tuple[str, str, str]]:
    """(os-release ID, VERSION_ID, PRETTY_NAME) of every analysed image's OS."""
    stmt = (
        select(Image.os_distro, Image.os_distro_version, Image.distro)
        .where(Image.analyser_version.is_not(None), Image.os_distro != "")
        .distinct()
    )
    return [(d, v, n) for d, v, n in session.execute(stmt)]


def package_types(session: Session) -> set[str]:
    """The package types (package, python, nodejs, go, jar) stored images hold."""
    return set(session.scalars(select(ImagePackage.type).distinct()))


# -- vulnerability data -----------------------------------------------------------------------


@dataclass(frozen=True)
class VulnFreshness:
    generation: int
    changed_at: datetime | None
    records: int
    images_due: int
    sources: Sequence[VulnSource]


def vuln_freshness(session: Session) -> VulnFreshness:
    """How current the vulnerability data is: cheaper than ``vuln_records.summary``,
    which also counts records per ecosystem."""
    generation = current_generation(session)
    state = session.get(VulnDbState, 1)
    due = select(func.count(Image.id)).where(
        matched_before(generation, findings_generation(session))
    )
    return VulnFreshness(
        generation=generation,
        changed_at=_aware(state.changed_at) if state else None,
        records=session.scalar(select(func.count(VulnRecord.id))) or 0,
        images_due=session.scalar(due) or 0,
        sources=session.scalars(select(VulnSource).order_by(VulnSource.location)).all(),
    )


def _severity_of_rank(rank: int) -> str:
    return SEVERITIES[rank] if 0 <= rank < len(SEVERITIES) else UNKNOWN


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates bypass the column type, so SQLite hands back naive UTC times."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
