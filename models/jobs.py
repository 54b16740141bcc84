"""Scan jobs: one row per request for scanning, with its state and counts.

State changes go through the named functions here (and the fenced writes of
:mod:`models.fencing`); nothing else assigns ``status``. Callers own the transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.requester import Requester
from models.base import Base, enum_column, rowcount, utcnow


class JobKind(enum.Enum):
    REGULAR_ALL = "regular-all"
    REGULAR_IMAGE = "regular-image"
    # A regular scan of a chosen set of images: a selection or a campaign by query.
    REGULAR_SELECT = "regular-select"
    ON_DEMAND = "on-demand"

    @property
    def is_regular(self) -> bool:
        return self is not JobKind.ON_DEMAND


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


REGULAR_KINDS = (JobKind.REGULAR_ALL, JobKind.REGULAR_IMAGE, JobKind.REGULAR_SELECT)
FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.STOPPED, JobStatus.FAILED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STOPPING})


class ScanJob(Base):
    __tablename__ = "scan_jobs"
    __table_args__ = (
        Index("ix_scan_jobs_kind_status", "kind", "status"),
        Index("ix_scan_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_scan_jobs_team_kind_status", "team", "kind", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(enum_column(JobKind))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus), default=JobStatus.QUEUED)
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    # Where the request came from: api, settings, schedule, webhook, ...
    source: Mapped[str] = mapped_column(String(32), default="api")
    # The image asked for, for single-image jobs: {registry, repo, tag, digest}.
    target: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The caller asked to wait for the running regular scan instead of being refused.
    wait: Mapped[bool] = mapped_column(Boolean, default=False)
    # The team of the API token that asked (fairness and limits are per team).
    team: Mapped[str] = mapped_column(String(128), default="")
    # A campaign's or a selected scan's scope: {"images": [...]} or {"query": {...}}.
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Where to deliver the final state, signed (see worker/callbacks.py).
    callback_url: Mapped[str] = mapped_column(String(2048), default="")

    images_total: Mapped[int] = mapped_column(Integer, default=0)
    images_scanned: Mapped[int] = mapped_column(Integer, default=0)
    images_failed: Mapped[int] = mapped_column(Integer, default=0)
    images_skipped: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    discovered_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    # Token of the current lease holder (regular scans). A worker whose lease was
    # taken over holds an older token and its writes are refused.
    fencing_token: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # How many times a worker took this job on (1 normally; more after takeovers).
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def target_name(self) -> str | None:
        if not self.target:
            return None
        t = self.target
        name = f"{t['registry']}/{t['repo']}"
        if t.get("tag"):
            name += f":{t['tag']}"
        if t.get("digest"):
            name += f"@{t['digest']}"
        return name


# -- job state -------------------------------------------------------------------------


def create_job(
    session: Session,
    kind: JobKind,
    requester: Requester,
    *,
    target: dict[str, Any] | None = None,
    wait: bool = False,
    publish_now: bool = True,
) -> ScanJob:
    now = utcnow()
    job = ScanJob(
        kind=kind,
        status=JobStatus.QUEUED,
        requested_by=requester.name,
        source=requester.source,
        target=target,
        wait=wait,
        team=requester.team,
        callback_url=requester.callback_url,
        created_at=now,
        published_at=now if publish_now else None,
    )
    session.add(job)
    session.flush()
    return job


def create_on_demand(session: Session, requester: Requester, target: dict[str, Any]) -> ScanJob:
    """A queued on-demand job for one image, published at once, its image known from the
    start: one INSERT, without the unit of work's bookkeeping, since every on-demand
    request makes one. The job returned is not in the session: it is for reading."""
    now = utcnow()
    values: dict[str, Any] = {
        "kind": JobKind.ON_DEMAND,
        "status": JobStatus.QUEUED,
        "requested_by": requester.name,
        "source": requester.source,
        "target": target,
        "wait": False,
        "team": requester.team,
        "callback_url": requester.callback_url,
        "created_at": now,
        "published_at": now,
        "images_total": 1,
        "discovered_at": now,
    }
    table = cast(Table, ScanJob.__table__)
    # The values go as parameters of one unchanging statement, compiled once and cached.
    job_id = session.execute(insert(table).returning(table.c.id), values).scalar_one()
    counts = {"images_scanned": 0, "images_failed": 0, "images_skipped": 0, "attempts": 0}
    return ScanJob(id=job_id, **values, **counts)


def active_regular_jobs(session: Session) -> Sequence[ScanJob]:
    """Regular jobs queued, running or stopping, oldest first."""
    stmt = (
        select(ScanJob)
        .where(ScanJob.kind.in_(REGULAR_KINDS), ScanJob.status.in_(ACTIVE_STATUSES))
        .order_by(ScanJob.id)
    )
    return session.scalars(stmt).all()


def any_regular_waiting(session: Session) -> bool:
    """Whether a regular job waits for the slot (queued, not yet published)."""
    stmt = select(ScanJob.id).where(
        ScanJob.kind.in_(REGULAR_KINDS),
        ScanJob.status.in_(ACTIVE_STATUSES),
        ScanJob.published_at.is_(None),
    )
    return session.scalar(stmt.limit(1)) is not None


def active_on_demand(session: Session, team: str) -> int:
    """On-demand jobs of a team that are waiting or running."""
    stmt = select(func.count()).where(
        ScanJob.team == team,
        ScanJob.kind == JobKind.ON_DEMAND,
        ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
    )
    return session.scalar(stmt) or 0


def mark_published(session: Session, job_id: int) -> bool:
    """Claim the right to publish a waiting job; False if someone else did."""
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.published_at.is_(None))
        .values(published_at=utcnow())
    )
    return rowcount(session.execute(stmt)) == 1


def request_stop(session: Session, job_id: int) -> None:
    session.execute(
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(status=JobStatus.STOPPING)
    )


def start_job(session: Session, job_id: int, resume: int | None = None) -> ScanJob | None:
    """Claim an on-demand job: a queued one, taken in its turn; or, with ``resume``, the
    run of it that was on its ``resume``-th attempt when it stopped (its worker went
    silent, or the database or Redis went away). Each claim is a new attempt, so two
    that try to resume the same run do not both succeed."""
    now = utcnow()
    claimable = ScanJob.status == JobStatus.QUEUED
    if resume is not None:
        claimable = or_(
            claimable, and_(ScanJob.status == JobStatus.RUNNING, ScanJob.attempts == resume)
        )
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, claimable)
        .values(
            status=JobStatus.RUNNING,
            attempts=ScanJob.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(ScanJob.started_at, now),
        )
    )
    if rowcount(session.execute(stmt)) != 1:
        return None
    return session.get(ScanJob, job_id, populate_existing=True)


def give_back_attempt(session: Session, job_id: int, token: int) -> None:
    """The holder of ``token`` handed the job on in good order: its claim does not count
    as an attempt lost."""
    session.execute(
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.fencing_token == token, ScanJob.attempts > 0)
        .values(attempts=ScanJob.attempts - 1)
    )


def withdraw_jobs(session: Session, job_ids: Iterable[int]) -> None:
    """Delete jobs that were committed but could not be published: nobody was told they
    exist, and no worker can have started them."""
    ids = list(job_ids)
    if ids:
        session.execute(
            delete(ScanJob).where(ScanJob.id.in_(ids), ScanJob.status == JobStatus.QUEUED)
        )


def append_job_error(session: Session, job_id: int, message: str) -> None:
    job = session.get(ScanJob, job_id)
    if job is not None:
        job.error = f"{job.error}\n{message}" if job.error else message


def stale_jobs(session: Session, statuses: Iterable[JobStatus], older_than: datetime) -> list[int]:
    stmt = select(ScanJob.id).where(
        ScanJob.status.in_(tuple(statuses)),
        func.coalesce(ScanJob.heartbeat_at, ScanJob.published_at, ScanJob.created_at) < older_than,
    )
    return list(session.scalars(stmt))


def highest_fencing_token(session: Session) -> int:
    """The highest fencing token any job was claimed under (0 for none)."""
    return session.scalar(select(func.max(ScanJob.fencing_token))) or 0


def waiting_since(session: Session, job_id: int) -> datetime | None:
    """When a queued on-demand job began to wait (None: not queued)."""
    stmt = select(func.coalesce(ScanJob.heartbeat_at, ScanJob.created_at)).where(
        ScanJob.id == job_id, ScanJob.status == JobStatus.QUEUED
    )
    return session.scalar(stmt)


def waiting_on_demand(
    session: Session, older_than: datetime
) -> list[tuple[int, str, datetime | None]]:
    """On-demand jobs queued since before ``older_than`` and not touched since: (id,
    team, heartbeat) of each, oldest first."""
    stmt = (
        select(ScanJob.id, ScanJob.team, ScanJob.heartbeat_at)
        .where(ScanJob.kind == JobKind.ON_DEMAND, ScanJob.status == JobStatus.QUEUED)
        .where(func.coalesce(ScanJob.heartbeat_at, ScanJob.created_at) < older_than)
        .order_by(ScanJob.id)
    )
    return [(job_id, team, seen) for job_id, team, seen in session.execute(stmt)]


def touch_if_unchanged(session: Session, job_id: int, seen: datetime | None) -> bool:
    """Claim a stale job for re-publishing: only one reaper wins."""
    cond = ScanJob.heartbeat_at.is_(None) if seen is None else ScanJob.heartbeat_at == seen
    stmt = update(ScanJob).where(ScanJob.id == job_id, cond).values(heartbeat_at=utcnow())
    return rowcount(session.execute(stmt)) == 1


# -- reading ---------------------------------------------------------------------------


def jobs_page(
    session: Session, *, kind: JobKind | None, offset: int, limit: int
) -> tuple[Sequence[ScanJob], int]:
    stmt = select(ScanJob)
    if kind is not None:
        stmt = stmt.where(ScanJob.kind == kind)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = session.scalars(stmt.order_by(ScanJob.id.desc()).offset(offset).limit(limit)).all()
    return page, total


def latest_regular_job(session: Session) -> ScanJob | None:
    """The regular scan running now, else the one that ran last."""
    regular = ScanJob.kind.in_(REGULAR_KINDS)
    stmt = select(ScanJob).where(regular, ScanJob.published_at.is_not(None))
    return session.scalar(stmt.order_by(ScanJob.id.desc()).limit(1))
