"""Image scans: the images a job has to scan, one row each, with their own state.

A regular sweep writes every image it discovers as a pending row, then hands them to
workers a few at a time; an on-demand or single-image job has one row from the start.
Ending an item is a fenced write (:mod:`models.fencing`). Callers own the transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import true as sql_true
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.reference import ImageRef, RegistryAddress
from models.base import Base, enum_column, rowcount, utcnow
from models.jobs import JobKind, ScanJob


class ItemStatus(enum.Enum):
    PENDING = "pending"  # discovered, not handed to a worker yet
    QUEUED = "queued"  # Celery message sent
    RUNNING = "running"  # a worker claimed it
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # never started because the scan was stopped

    @property
    def is_final(self) -> bool:
        return self in (ItemStatus.DONE, ItemStatus.FAILED, ItemStatus.SKIPPED)


IN_FLIGHT = (ItemStatus.QUEUED, ItemStatus.RUNNING)
_Key = TypeVar("_Key", int, str)


class ImageScan(Base):
    """One image reference a job has to scan: a tag or digest in a repository."""

    __tablename__ = "image_scans"
    __table_args__ = (
        Index("ix_image_scans_job_id_status", "job_id", "status"),
        Index("ix_image_scans_image", "repository", "tag", "registry_host"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    # Index of the specification this image was found through (scanner limits).
    spec_position: Mapped[int] = mapped_column(Integer, default=0)
    # Where to connect, scheme included; ``registry_host`` is the host:port identity.
    registry_url: Mapped[str] = mapped_column(String(300))
    registry_host: Mapped[str] = mapped_column(String(255))
    # The credential of the specification the image was found through ("" for none).
    credential_id: Mapped[str] = mapped_column(String(128), default="")
    # The specification's os: only platform images of it are scanned ("" for any).
    os: Mapped[str] = mapped_column(String(32), default="")
    repository: Mapped[str] = mapped_column(String(512))
    tag: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[ItemStatus] = mapped_column(enum_column(ItemStatus), default=ItemStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Lease token the item was dispatched under; results under another token are refused.
    fence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class FoundThrough(Protocol):
    """The specification an image was found through (``scheduler.scope.Spec``)."""

    @property
    def position(self) -> int: ...
    @property
    def address(self) -> RegistryAddress: ...
    @property
    def credential_id(self) -> str: ...
    @property
    def os(self) -> str: ...


def item_fields(spec: FoundThrough, repository: str, tag: str, digest: str = "") -> dict[str, Any]:
    """The columns of an image found through ``spec``: where to connect and with what."""
    return {
        "spec_position": spec.position,
        "registry_url": spec.address.base_url,
        "credential_id": spec.credential_id,
        "os": spec.os,
        "registry_host": spec.address.host,
        "repository": repository,
        "tag": tag,
        "digest": digest,
    }


# -- discovery --------------------------------------------------------------------------


def add_items(session: Session, job_id: int, items: Iterable[dict[str, Any]]) -> int:
    """Record discovered images (:func:`item_fields`) as pending, skipping any the job
    already has."""
    seen: set[tuple[str, str, str, str]] = {
        (host, repo, tag, digest)
        for host, repo, tag, digest in session.execute(
            select(
                ImageScan.registry_host, ImageScan.repository, ImageScan.tag, ImageScan.digest
            ).where(ImageScan.job_id == job_id)
        )
    }
    added = 0
    for item in items:
        key = (item["registry_host"], item["repository"], item["tag"], item["digest"])
        if key in seen:
            continue
        seen.add(key)
        session.add(ImageScan(job_id=job_id, status=ItemStatus.PENDING, **item))
        added += 1
    session.flush()
    return added


def add_target(session: Session, job: ScanJob, spec: FoundThrough, ref: ImageRef) -> None:
    """The one image of a single-image job: discovered as soon as the job exists. A job
    made with ``images_total=1`` and ``discovered_at`` (as on-demand jobs are) costs
    one INSERT here and nothing else: every on-demand request pays for this."""
    fields = item_fields(spec, ref.repo, ref.tag, ref.digest)
    row = {"job_id": job.id, "status": ItemStatus.PENDING, **fields}
    session.execute(insert(cast(Table, ImageScan.__table__)), row)
    if job.images_total != 1 or job.discovered_at is None:
        job.images_total = 1
        job.discovered_at = utcnow()
        session.flush()


def set_total(session: Session, job_id: int, *, discovered: bool = True) -> None:
    """The job's total is the number of its images; with ``discovered``, discovery is over
    (a stop can also end it before it found everything)."""
    total = session.scalar(select(func.count()).where(ImageScan.job_id == job_id)) or 0
    values: dict[str, Any] = {"images_total": total}
    if discovered:
        values["discovered_at"] = utcnow()
    session.execute(update(ScanJob).where(ScanJob.id == job_id).values(**values))


# -- hand-out -----------------------------------------------------------------------------


def item_counts(session: Session, job_id: int) -> dict[ItemStatus, int]:
    stmt = (
        select(ImageScan.status, func.count())
        .where(ImageScan.job_id == job_id)
        .group_by(ImageScan.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def in_flight_by_spec(session: Session, job_id: int) -> dict[int, int]:
    stmt = (
        select(ImageScan.spec_position, func.count())
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(IN_FLIGHT))
        .group_by(ImageScan.spec_position)
    )
    return {pos: n for pos, n in session.execute(stmt)}


def in_flight_ids_by_spec(session: Session, job_id: int) -> dict[int, set[int]]:
    """The ids of the job's items queued or running, per specification."""
    stmt = select(ImageScan.spec_position, ImageScan.id).where(
        ImageScan.job_id == job_id, ImageScan.status.in_(IN_FLIGHT)
    )
    found: dict[int, set[int]] = {}
    for position, item_id in session.execute(stmt):
        found.setdefault(position, set()).add(item_id)
    return found


def pending_by_spec(session: Session, job_id: int) -> dict[int, int]:
    stmt = (
        select(ImageScan.spec_position, func.count())
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.PENDING)
        .group_by(ImageScan.spec_position)
    )
    return {pos: n for pos, n in session.execute(stmt)}


def queue_items(
    session: Session, job_id: int, spec_position: int | None, limit: int, token: int | None
) -> list[tuple[int, int]]:
    """Mark up to ``limit`` pending items queued; return their (id, attempt) pairs."""
    rows = session.execute(
        select(ImageScan.id, ImageScan.attempts)
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.PENDING)
        .where(sql_true() if spec_position is None else ImageScan.spec_position == spec_position)
        .order_by(ImageScan.id)
        .limit(limit)
    ).all()
    ids = [item_id for item_id, _attempts in rows]
    # One statement for the lot: a sweep hands out thousands of images.
    for chunk in chunks(ids):
        session.execute(
            update(ImageScan)
            .where(ImageScan.id.in_(chunk))
            .values(
                status=ItemStatus.QUEUED,
                fence=token,
                attempts=ImageScan.attempts + 1,
                queued_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
    return [(item_id, attempts + 1) for item_id, attempts in rows]


def reset_in_flight(session: Session, job_id: int) -> None:
    """Items queued or running go back to pending, to be handed out again."""
    session.execute(
        update(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(IN_FLIGHT))
        .values(status=ItemStatus.PENDING)
    )


def requeue_stuck_items(session: Session, job_id: int, older_than: datetime) -> int:
    """Items handed out so long ago that their worker must be gone go back to pending."""
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.job_id == job_id,
            ImageScan.status.in_(IN_FLIGHT),
            ImageScan.queued_at < older_than,
        )
        .values(status=ItemStatus.PENDING)
    )
    return rowcount(session.execute(stmt))


def claim_item(session: Session, item_id: int, attempt: int) -> ImageScan | None:
    """Start an item, unless this message is stale (an older attempt of it)."""
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.id == item_id,
            ImageScan.status == ItemStatus.QUEUED,
            ImageScan.attempts == attempt,
        )
        .values(status=ItemStatus.RUNNING, started_at=utcnow())
    )
    if rowcount(session.execute(stmt)) != 1:
        return None
    return session.get(ImageScan, item_id, populate_existing=True)


def claim_items(session: Session, items: Sequence[tuple[int, int]]) -> list[ImageScan]:
    """Start the items of a batch, leaving out those whose (id, attempt) is stale; the
    items started, in the batch's order."""
    by_attempt: dict[int, list[int]] = {}
    for item_id, attempt in items:
        by_attempt.setdefault(attempt, []).append(item_id)
    started: set[int] = set()
    now = utcnow()
    for attempt, ids in by_attempt.items():
        for chunk in chunks(ids):
            stmt = (
                update(ImageScan)
                .where(
                    ImageScan.id.in_(chunk),
                    ImageScan.status == ItemStatus.QUEUED,
                    ImageScan.attempts == attempt,
                )
                .values(status=ItemStatus.RUNNING, started_at=now)
                .returning(ImageScan.id)
                .execution_options(synchronize_session=False)
            )
            started.update(session.scalars(stmt))
    if not started:
        return []
    loaded = {
        item.id: item
        for chunk in chunks(sorted(started))
        for item in session.scalars(
            select(ImageScan)
            .where(ImageScan.id.in_(chunk))
            .execution_options(populate_existing=True)
        )
    }
    return [loaded[item_id] for item_id, _attempt in items if item_id in loaded]


def give_back(session: Session, item_ids: Sequence[int]) -> None:
    """Items a batch started but will not scan (its worker is stopping) are pending again,
    for the sweep's orchestrator to hand out anew."""
    for chunk in chunks(list(item_ids)):
        session.execute(
            update(ImageScan)
            .where(ImageScan.id.in_(chunk), ImageScan.status == ItemStatus.RUNNING)
            .values(status=ItemStatus.PENDING)
            .execution_options(synchronize_session=False)
        )


def keep_alive(session: Session, item_ids: Sequence[int]) -> None:
    """Items a batch still holds are not stuck: their hand-out time moves on, so the
    orchestrator does not hand them out again while the batch works through the others."""
    for chunk in chunks(list(item_ids)):
        session.execute(
            update(ImageScan)
            .where(ImageScan.id.in_(chunk), ImageScan.status == ItemStatus.RUNNING)
            .values(queued_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def chunks(ids: Sequence[_Key], size: int = 500) -> Iterable[Sequence[_Key]]:
    """Bound the parameters of one IN list (SQLite allows a few thousand at most)."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def skip_items(session: Session, job_id: int, statuses: Iterable[ItemStatus]) -> int:
    stmt = (
        update(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(tuple(statuses)))
        .values(status=ItemStatus.SKIPPED, finished_at=utcnow())
    )
    return rowcount(session.execute(stmt))


# -- reading ------------------------------------------------------------------------------


def failed_items(session: Session, job_id: int, limit: int = 1000) -> Sequence[ImageScan]:
    stmt = (
        select(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.FAILED)
        .order_by(ImageScan.id)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def on_demand_jobs_for(
    session: Session, registry: str | None, repo: str, tag: str, digest: str, limit: int = 20
) -> Sequence[ScanJob]:
    """Recent on-demand jobs of one image, newest first."""
    stmt = (
        select(ScanJob)
        .join(ImageScan, ImageScan.job_id == ScanJob.id)
        .where(ScanJob.kind == JobKind.ON_DEMAND, ImageScan.repository == repo)
    )
    if registry:
        stmt = stmt.where(ImageScan.registry_host == registry)
    if tag:
        stmt = stmt.where(ImageScan.tag == tag)
    if digest:
        stmt = stmt.where(ImageScan.digest == digest)
    return session.scalars(stmt.order_by(ScanJob.id.desc()).limit(limit)).all()
