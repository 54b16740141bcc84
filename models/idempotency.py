"""Idempotency keys: the answer given to a team's keyed request. The unique (team, key)
constraint decides which of two concurrent requests does the work. Callers own the
transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, rowcount, utcnow


class IdempotencyKey(Base):
    """The answer given to a team's request with an ``Idempotency-Key``, for 24 hours."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("team", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    team: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


# How long a key holds its answer.
WINDOW = timedelta(hours=24)
# The response of a key whose request is still being served.
PENDING: dict[str, Any] = {}


def drop_expired(session: Session, team: str, key: str, before: datetime) -> None:
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.team == team,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < before,
        )
    )


def drop_all_expired(session: Session, before: datetime) -> int:
    """Forget every key older than ``before``; how many."""
    stmt = delete(IdempotencyKey).where(IdempotencyKey.created_at < before)
    return rowcount(session.execute(stmt))


def find(session: Session, team: str, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(IdempotencyKey.team == team, IdempotencyKey.key == key)
    return session.scalar(stmt)


def reserve(session: Session, team: str, key: str, request_hash: str) -> None:
    """Claim the key; raises ``IntegrityError`` when another request holds it."""
    session.add(IdempotencyKey(team=team, key=key, request_hash=request_hash, response=PENDING))
    session.flush()


def complete(session: Session, team: str, key: str, response: dict[str, Any]) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.team == team, IdempotencyKey.key == key)
        .values(response=response)
    )


def release(session: Session, team: str, key: str) -> None:
    """Forget a key whose request failed, so that a retry with it can succeed."""
    session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.team == team, IdempotencyKey.key == key)
    )
