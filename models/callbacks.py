"""Delivery attempts of completion callbacks. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.enqueue import CallbackDelivery


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


def delivered(session: Session, job_id: int) -> bool:
    """Whether a receiver already took the callback (answered 2xx)."""
    stmt = select(CallbackDelivery.id).where(
        CallbackDelivery.job_id == job_id,
        CallbackDelivery.status_code >= 200,
        CallbackDelivery.status_code < 300,
    )
    return session.scalar(stmt.limit(1)) is not None
