"""The scan schedule (one row) and a record of every tick it fired or skipped."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

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
