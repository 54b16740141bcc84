"""Fenced writes: what a worker writes on behalf of a regular scan it holds the lease of.

Each regular scan's lease comes with a fencing token (a number that only grows),
stored on the job row when the lease holder claims the job. A fenced write first
touches the job row under the caller's token; when that matches nothing, a newer
holder has taken the job over, :class:`Fenced` is raised and the caller rolls back.
On-demand jobs have no lease: their token is ``None`` and the fence only touches the
heartbeat. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from models.base import rowcount, utcnow
from models.image_scans import ImageScan, ItemStatus, chunks, item_counts, reset_in_flight
from models.jobs import ACTIVE_STATUSES, JobStatus, ScanJob


class Fenced(Exception):
    """A write was refused: the caller no longer holds the job's lease."""


def fence(session: Session, job_id: int, token: int | None) -> None:
    """Touch the job's heartbeat under ``token``; raise :class:`Fenced` if not the holder.

    On PostgreSQL this also row-locks the job until commit, so a takeover waits
    for a write in progress instead of interleaving with it.
    """
    stmt = update(ScanJob).where(ScanJob.id == job_id).values(heartbeat_at=utcnow())
    if token is not None:
        stmt = stmt.where(ScanJob.fencing_token == token)
    if rowcount(session.execute(stmt)) != 1:
        raise Fenced(f"job {job_id}: lease token {token} is no longer current")


def claim_regular(session: Session, job_id: int, token: int) -> ScanJob | None:
    """Take a regular job over under a new fencing token (first start or resume)."""
    now = utcnow()
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.status.in_(ACTIVE_STATUSES))
        .values(
            fencing_token=token,
            attempts=ScanJob.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(ScanJob.started_at, now),
            published_at=func.coalesce(ScanJob.published_at, now),
        )
    )
    if rowcount(session.execute(stmt)) != 1:
        return None
    job = session.get_one(ScanJob, job_id, populate_existing=True)
    if job.status is JobStatus.QUEUED:
        job.status = JobStatus.RUNNING
    # Items handed to the previous holder may be lost with it; they are redone under
    # this token, and whatever the old holder still writes is refused.
    reset_in_flight(session, job_id)
    return job


def finish_job(
    session: Session, job_id: int, token: int | None, status: JobStatus, error: str | None = None
) -> None:
    """End a job with its final counts, under its fencing token."""
    fence(session, job_id, token)
    job = session.get_one(ScanJob, job_id, populate_existing=True)
    if job.status.is_final:
        return  # ended by someone else meanwhile (recovery gave up on it): theirs stands
    counts = item_counts(session, job_id)
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "images_total": sum(counts.values()),
        "images_scanned": counts.get(ItemStatus.DONE, 0),
        "images_failed": counts.get(ItemStatus.FAILED, 0),
        "images_skipped": counts.get(ItemStatus.SKIPPED, 0),
    }
    if error is not None:
        values["error"] = error
    session.execute(update(ScanJob).where(ScanJob.id == job_id).values(**values))


def finish_item(
    session: Session, item: ImageScan, attempt: int, status: ItemStatus, error: str | None = None
) -> None:
    """End an item and count it on its job; raise :class:`Fenced` if it was handed to
    someone else meanwhile."""
    fence(session, item.job_id, item.fence)
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.id == item.id,
            ImageScan.attempts == attempt,
            ImageScan.status == ItemStatus.RUNNING,
        )
        .values(status=status, error=error, finished_at=utcnow())
    )
    if rowcount(session.execute(stmt)) != 1:
        raise Fenced(f"image scan {item.id}: attempt {attempt} is no longer current")
    counter = {
        ItemStatus.DONE: ScanJob.images_scanned,
        ItemStatus.FAILED: ScanJob.images_failed,
        ItemStatus.SKIPPED: ScanJob.images_skipped,
    }.get(status)
    if counter is not None:
        session.execute(
            update(ScanJob).where(ScanJob.id == item.job_id).values({counter: counter + 1})
        )


def finish_items(
    session: Session,
    job_id: int,
    token: int | None,
    ends: Sequence[tuple[ImageScan, int, ItemStatus, str | None]],
) -> set[int]:
    """End a batch of one job's items, each (item, attempt, status, error), and count them
    on the job; the ids of those ended. An item handed to someone else meanwhile is left
    out; :class:`Fenced` when the job itself was taken over."""
    fence(session, job_id, token)
    groups: dict[tuple[int, ItemStatus, str | None], list[int]] = {}
    for item, attempt, status, error in ends:
        groups.setdefault((attempt, status, error), []).append(item.id)
    ended: set[int] = set()
    counted = {ItemStatus.DONE: 0, ItemStatus.FAILED: 0, ItemStatus.SKIPPED: 0}
    now = utcnow()
    for (attempt, status, error), ids in groups.items():
        for chunk in chunks(ids):
            stmt = (
                update(ImageScan)
                .where(
                    ImageScan.id.in_(chunk),
                    ImageScan.attempts == attempt,
                    ImageScan.status == ItemStatus.RUNNING,
                )
                .values(status=status, error=error, finished_at=now)
                .returning(ImageScan.id)
                .execution_options(synchronize_session=False)
            )
            done = set(session.scalars(stmt))
            ended |= done
            if status in counted:
                counted[status] += len(done)
    values = {
        column: column + n
        for column, n in (
            (ScanJob.images_scanned, counted[ItemStatus.DONE]),
            (ScanJob.images_failed, counted[ItemStatus.FAILED]),
            (ScanJob.images_skipped, counted[ItemStatus.SKIPPED]),
        )
        if n
    }
    if values:
        session.execute(update(ScanJob).where(ScanJob.id == job_id).values(values))
    return ended
