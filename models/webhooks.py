"""Records of registry push events, so a replayed or redelivered event starts nothing.

An event is *claimed* (its id inserted) before it is acted on: the unique event id
makes the second of two concurrent deliveries fail to claim, whichever API process
it reached. Callers own the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.schedule import WebhookEvent

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
    return session.execute(delete(WebhookEvent).where(WebhookEvent.received_at < before)).rowcount


def release_event(session: Session, event_id: str) -> None:
    """Forget a claim whose handling failed, so the registry's next delivery is acted on."""
    session.execute(delete(WebhookEvent).where(WebhookEvent.event_id == event_id))
