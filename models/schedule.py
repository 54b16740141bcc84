"""The scan schedule (one row) and a record of every tick it fired or skipped."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow


class ScanSchedule(Base):
    __tablename__ = "scan_schedule"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The reference field: 0 disables, at least one hour otherwise.
    registry_scan_period_ms: Mapped[int] = mapped_column(BigInteger, default=86_400_000)
    cron: Mapped[str] = mapped_column(String(128), default="")  # wins over the period when set
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ScheduleTick(Base):
    """A tick that was due: fired once whatever the number of schedulers."""

    __tablename__ = "schedule_ticks"

    id: Mapped[int] = mapped_column(primary_key=True)
    due_at: Mapped[datetime] = mapped_column(unique=True)
    fired_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))  # started, skipped, failed
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("scan_jobs.id", ondelete="SET NULL"), default=None
    )
    reason: Mapped[str] = mapped_column(Text, default="")
    missed: Mapped[int] = mapped_column(BigInteger, default=0)  # ticks folded into this one


SCHEDULE_ID = 1  # the one row
DEFAULT_PERIOD_MS = 86_400_000


def load_schedule(session: Session) -> ScanSchedule | None:
    return session.get(ScanSchedule, SCHEDULE_ID)


def ensure_schedule(session: Session) -> ScanSchedule:
    """The schedule row, created with the defaults the first time anyone looks.

    Its ``updated_at`` is where counting due times starts, so it must be stored, not
    made up by each reader.
    """
    row = load_schedule(session)
    if row is None:
        row = ScanSchedule(id=SCHEDULE_ID, registry_scan_period_ms=DEFAULT_PERIOD_MS)
        session.add(row)
        session.flush()
    return row


def update_schedule(session: Session, changes: dict[str, Any]) -> ScanSchedule:
    """Change only the given columns; ``updated_at`` moves only if a value changed."""
    row = ensure_schedule(session)
    for column, value in changes.items():
        setattr(row, column, value)
    session.flush()
    return row


def last_tick(session: Session) -> ScheduleTick | None:
    return session.scalars(select(ScheduleTick).order_by(ScheduleTick.due_at.desc())).first()


def recent_ticks(session: Session, limit: int) -> list[ScheduleTick]:
    query = select(ScheduleTick).order_by(ScheduleTick.due_at.desc()).limit(limit)
    return list(session.scalars(query))


def claim_tick(session: Session, due_at: datetime, missed: int) -> int:
    """Insert the tick for ``due_at``; IntegrityError means another scheduler has it.

    It is written as failed until its outcome is known, so a scheduler that dies
    between claiming and asking leaves an honest record.
    """
    tick = ScheduleTick(
        due_at=due_at,
        outcome="failed",
        reason="the scheduler stopped before it asked for the sweep",
        missed=missed,
    )
    session.add(tick)
    session.flush()
    return tick.id


def record_outcome(
    session: Session, tick_id: int, outcome: str, job_id: int | None, reason: str
) -> None:
    tick = session.get(ScheduleTick, tick_id)
    if tick is not None:
        tick.outcome, tick.job_id, tick.reason = outcome, job_id, reason
