"""Records of registry push events, so a replayed or redelivered event starts nothing.

An event is *claimed* (its id inserted) before it is acted on: the unique event id
makes the second of two concurrent deliveries fail to claim, whichever API process
it reached. Callers own the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, rowcount, utcnow


class WebhookEvent(Base):
    """A registry push event already acted on, so replays start nothing."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    source: Mapped[str] = mapped_column(String(32))  # distribution, harbor
    outcome: Mapped[str] = mapped_column(String(32))  # scanned, ignored, out-of-scope
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("scan_jobs.id", ondelete="SET NULL"), default=None
    )
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


PENDING = "pending"


def claim_event(session: Session, event_id: str, source: str) -> bool:
    """Insert the event's record; False when it was already there (a duplicate)."""
    try:
        with session.begin_nested():
            session.add(WebhookEvent(event_id=event_id, source=source, outcome=PENDING))
    except IntegrityError:
        return False
    return True


def settle_event(session: Session, event_id: str, outcome: str, job_id: int | None) -> None:
    """Record what became of a claimed event."""
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.event_id == event_id)
        .values(outcome=outcome, job_id=job_id)
    )


def forget_events(session: Session, before: datetime) -> int:
    """Forget the events received before ``before``; how many."""
    return rowcount(session.execute(delete(WebhookEvent).where(WebhookEvent.received_at < before)))


def release_event(session: Session, event_id: str) -> None:
    """Forget a claim whose handling failed, so the registry's next delivery is acted on."""
    session.execute(delete(WebhookEvent).where(WebhookEvent.event_id == event_id))
