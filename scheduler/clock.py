"""``regscan scheduler``: fires the scheduled sweep at each due time, once cluster-wide.

Any number of scheduler processes may run. Each wakes at the due time and tries to
insert the :class:`~models.ScheduleTick` row for it; the unique ``due_at`` lets exactly
one succeed, and only that one asks :class:`~scheduler.admission.Admission` for the
sweep.
A sweep still running makes the tick ``skipped`` (never queued behind it). After a
downtime the due times that passed are folded into one catch-up tick.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.requester import Requester
from core.settings import Settings
from models import ScanSchedule
from models import schedule as store
from models.base import utcnow
from models.db import transaction
from scheduler.admission import Admission
from scheduler.cadence import Cadence
from scheduler.errors import Busy, NoSpecifications, ScanConflict

log = logging.getLogger(__name__)

# Who a scheduled sweep is asked by.
REQUESTER = Requester("schedule", source="schedule")
BUSY_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class Plan:
    """The schedule as read now, and the first due time not yet fired (None: disabled)."""

    cadence: Cadence
    due: datetime | None


def cadence_of(row: ScanSchedule, settings: Settings) -> Cadence:
    """The row as the clock reads it; a period below the minimum counts as the minimum."""
    period = row.registry_scan_period_ms
    if period > 0:
        period = max(period, settings.schedule_min_period_ms)
    seconds = settings.schedule_cron_seconds and len(row.cron.split()) == 6
    return Cadence(period, row.cron, row.timezone or "UTC", seconds=seconds)


def plan(session: Session, settings: Settings, row: ScanSchedule | None = None) -> Plan:
    """Due times count from the last tick, or from the last change of the schedule if
    later, so a new schedule never fires for the time before it existed."""
    row = row if row is not None else store.ensure_schedule(session)
    cadence = cadence_of(row, settings)
    last = store.last_tick(session)
    since = max(last.due_at, row.updated_at) if last else row.updated_at
    return Plan(cadence, cadence.next_after(since))


class Clock:
    """The loop of one scheduler process."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        admission: Admission,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.admission = admission
        self.stop = stop

    def run(self) -> None:
        """Until stopped: sleep in short steps, fire what is due."""
        log.info("scheduler ready poll=%ss", self.settings.schedule_poll_seconds)
        while not self.stop.is_set():
            try:
                wait = self.step()
            except Exception:
                log.exception("scheduler pass failed")
                wait = self.settings.schedule_poll_seconds
            self.stop.wait(wait)
        log.info("scheduler stopped")

    def step(self) -> float:
        """Fire the tick if one is due; return how long to sleep before looking again.

        Never longer than the poll interval, so a changed schedule is seen soon.
        """
        with transaction(self.sessions) as session:
            current = plan(session, self.settings)
        now = utcnow()
        poll = self.settings.schedule_poll_seconds
        if current.due is None:
            return poll
        if current.due > now:
            return min(poll, (current.due - now).total_seconds())
        due_at, missed = current.cadence.fold(current.due, now)
        self.fire(due_at, missed)
        return 0.0

    def fire(self, due_at: datetime, missed: int) -> None:
        """Claim the tick; only the process whose insert wins asks for the sweep."""
        try:
            with transaction(self.sessions) as session:
                tick_id = store.claim_tick(session, due_at, missed)
        except IntegrityError:
            log.info("tick due_at=%s fired by another scheduler", due_at.isoformat())
            return
        outcome, job_id, reason = self.ask()
        with transaction(self.sessions) as session:
            store.record_outcome(session, tick_id, outcome, job_id, reason)
        log.info(
            "tick due_at=%s outcome=%s job=%s missed=%s %s",
            due_at.isoformat(),
            outcome,
            job_id,
            missed,
            reason,
        )

    def ask(self) -> tuple[str, int | None, str]:
        """Ask for the sweep: (outcome, job id, reason)."""
        for _ in range(BUSY_RETRIES):
            try:
                job = self.admission.request_regular_all(REQUESTER)
            except ScanConflict as exc:
                return "skipped", None, _running(exc)
            except NoSpecifications as exc:
                return "skipped", None, str(exc)
            except Busy:
                continue  # another request is being admitted this instant
            except Exception as exc:
                log.exception("scheduled sweep could not be asked for")
                return "failed", None, f"{type(exc).__name__}: {exc}"
            return "started", job.id, ""
        return "failed", None, "the admission lock stayed busy; the next tick tries again"


def _running(exc: ScanConflict) -> str:
    return (
        f"regular scan {exc.job_id} was still {exc.status}; a scheduled sweep is not "
        "queued behind it, the next tick tries again"
    )


def run_clock(settings: Settings) -> int:
    """The ``regscan scheduler`` command: run until SIGTERM or SIGINT."""
    from scheduler.wiring import wire

    wiring = wire(settings)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("scheduler got signal %s; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    Clock(settings, wiring.sessions, wiring.admission, stop).run()
    return 0
