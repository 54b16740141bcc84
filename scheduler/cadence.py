"""When scheduled sweeps are due: a pure function of the schedule, the same in every process.

Every scheduler process must compute the same due times, or the unique ``due_at`` of a
tick could not decide which of them fires it. So a period counts from the Unix epoch (a
24 h period is due at 00:00 UTC every day) and a cron expression is read in its time
zone; neither depends on when a process started.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# Folding a long downtime under a per-second cron walks at most this many due times.
MAX_FOLD = 100_000


class InvalidSchedule(ValueError):
    """A schedule field that cannot be used; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Cadence:
    """A schedule as the clock reads it: a cron expression wins over the period."""

    period_ms: int
    cron: str = ""
    timezone: str = "UTC"
    seconds: bool = False  # the cron expression has a sixth field, seconds, first

    @property
    def kind(self) -> str:
        """``cron``, ``period`` or ``disabled``."""
        if self.cron:
            return "cron"
        return "period" if self.period_ms > 0 else "disabled"

    def next_after(self, moment: datetime) -> datetime | None:
        """The first due time strictly after ``moment``, in UTC; None when disabled."""
        if self.cron:
            return self._cron_from(moment).get_next(datetime).astimezone(UTC)
        if self.period_ms <= 0:
            return None
        periods = (moment - EPOCH) // _MS // self.period_ms + 1
        return EPOCH + periods * self.period_ms * _MS

    def fold(self, first: datetime, now: datetime) -> tuple[datetime, int]:
        """The latest due time not after ``now``, from ``first`` (already due) on, and how
        many due times before it it stands for."""
        if not self.cron:
            folded = (now - first) // _MS // self.period_ms
            return first + folded * self.period_ms * _MS, folded
        it = self._cron_from(first)
        latest, folded = first, 0
        while folded < MAX_FOLD:
            following = it.get_next(datetime).astimezone(UTC)
            if following > now:
                break
            latest, folded = following, folded + 1
        return latest, folded

    def _cron_from(self, moment: datetime) -> croniter:
        local = moment.astimezone(ZoneInfo(self.timezone))
        return croniter(self.cron, local, second_at_beginning=self.seconds)


def check_period(period_ms: int, minimum_ms: int) -> int:
    """0 (no periodic sweep) or at least ``minimum_ms``."""
    if period_ms == 0 or period_ms >= minimum_ms:
        return period_ms
    hours = " (one hour)" if minimum_ms == 3_600_000 else ""
    raise InvalidSchedule(
        f"registryScanPeriodMs must be 0 (no periodic scans) or at least {minimum_ms} "
        f"milliseconds{hours}; got {period_ms}"
    )


def check_cron(expression: str, *, seconds_allowed: bool) -> str:
    """A cron expression of five fields (six, seconds first, when allowed); '' clears it."""
    fields = expression.split()
    if not fields:
        return ""
    allowed = (5, 6) if seconds_allowed else (5,)
    if len(fields) not in allowed:
        shape = "minute hour day-of-month month day-of-week"
        raise InvalidSchedule(
            f"cron {expression!r} has {len(fields)} field(s); write 5 ({shape}), "
            "for example '0 2 * * *' for 02:00 every day"
        )
    normal = " ".join(fields)
    try:
        Cadence(0, normal, "UTC", seconds=len(fields) == 6).next_after(EPOCH)
    except (CroniterError, ValueError, KeyError) as exc:
        message = f"cron {expression!r} is not a valid cron expression: {exc}"
        raise InvalidSchedule(message) from None
    return normal


def check_timezone(name: str) -> str:
    """An IANA time zone name such as ``Europe/Paris`` or ``UTC``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"timezone {name!r} is not a known IANA time zone; write a name such as "
            "'UTC' or 'Europe/Paris'"
        ) from None
    return name
