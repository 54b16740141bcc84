"""Delivery attempts of completion callbacks. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.enqueue import CallbackDelivery
from models.jobs import FINAL_STATUSES, ScanJob


def record(
    session: Session,
    job_id: int,
    attempt: int,
    url: str,
    status_code: int | None,
    error: str = "",
) -> None:
    session.add(
        CallbackDelivery(
            job_id=job_id, attempt=attempt, url=url, status_code=status_code, error=error
        )
    )


def deliveries(session: Session, job_id: int) -> Sequence[CallbackDelivery]:
    stmt = select(CallbackDelivery).where(CallbackDelivery.job_id == job_id)
    return session.scalars(stmt.order_by(CallbackDelivery.id)).all()


def never_attempted(
    session: Session, ended_after: datetime, ended_before: datetime, limit: int = 500
) -> list[int]:
    """Jobs that asked for a callback and ended in the window with no delivery attempt."""
    attempted = select(CallbackDelivery.id).where(CallbackDelivery.job_id == ScanJob.id)
    stmt = (
        select(ScanJob.id)
        .where(
            ScanJob.callback_url != "",
            ScanJob.status.in_(FINAL_STATUSES),
            ScanJob.finished_at > ended_after,
            ScanJob.finished_at <= ended_before,
            ~attempted.exists(),
        )
        .order_by(ScanJob.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def delivered(session: Session, job_id: int) -> bool:
    """Whether a receiver already took the callback (answered 2xx)."""
    stmt = select(CallbackDelivery.id).where(
        CallbackDelivery.job_id == job_id,
        CallbackDelivery.status_code >= 200,
        CallbackDelivery.status_code < 300,
    )
    return session.scalar(stmt.limit(1)) is not None
