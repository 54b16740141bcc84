"""Delivery attempts of completion callbacks. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow
from models.jobs import FINAL_STATUSES, ScanJob


class CallbackDelivery(Base):
    """One attempt to deliver a job's final state to its ``callbackUrl``."""

    __tablename__ = "callback_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2048))
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)


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
