"""``/settings/scan``: when the scheduled sweep runs, and what its last ticks did."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field, StrictInt, StrictStr
from sqlalchemy.orm import Session

from api.deps import RawBody, State, User
from api.errors import ApiError
from api.openapi import body
from api.schemas import Strict, parse_json_body
from core.settings import Settings
from core.views import ts
from models import ScanSchedule, ScheduleTick
from models import schedule as store
from models.base import utcnow
from models.db import transaction
from scheduler.cadence import InvalidSchedule, check_cron, check_period, check_timezone
from scheduler.clock import plan

router = APIRouter()

RECENT_TICKS = 10


class ScanSettings(Strict):
    """The fields a POST may change; a field left out keeps its value."""

    # At most ten years: beyond, the period means nothing and would overflow the column.
    registryScanPeriodMs: StrictInt | None = Field(default=None, le=315_360_000_000)
    cron: StrictStr | None = None
    timezone: StrictStr | None = None


@router.get("/settings/scan")
def get_scan_settings(_user: User, state: State) -> dict[str, Any]:
    with transaction(state.sessions) as session:
        return _view(session, state.settings, store.ensure_schedule(session))


@router.post("/settings/scan", openapi_extra=body(ScanSettings))
def post_scan_settings(_user: User, state: State, body: RawBody) -> dict[str, Any]:
    """Change the given fields only; unknown fields and bad values are refused."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(400, 'body must be an object such as {"registryScanPeriodMs": 86400000}')
    changes = _columns(ScanSettings.model_validate(payload), state.settings)
    with transaction(state.sessions) as session:
        return _view(session, state.settings, store.update_schedule(session, changes))


def _columns(given: ScanSettings, settings: Settings) -> dict[str, Any]:
    """Validated column values for the fields that were given."""
    changes: dict[str, Any] = {}
    try:
        if given.registryScanPeriodMs is not None:
            minimum = settings.schedule_min_period_ms
            changes["registry_scan_period_ms"] = check_period(given.registryScanPeriodMs, minimum)
        if given.cron is not None:
            seconds = settings.schedule_cron_seconds
            changes["cron"] = check_cron(given.cron, seconds_allowed=seconds)
        if given.timezone is not None:
            changes["timezone"] = check_timezone(given.timezone)
    except InvalidSchedule as exc:
        raise ApiError(400, str(exc)) from None
    return changes


def _view(session: Session, settings: Settings, row: ScanSchedule) -> dict[str, Any]:
    current = plan(session, settings, row)
    return {
        "registryScanPeriodMs": row.registry_scan_period_ms,
        "cron": row.cron,
        "timezone": row.timezone,
        "schedule": current.cadence.kind,
        "nextRunAt": ts(current.due),
        # A due time already past means ticks were missed: one catch-up fires at once.
        "overdue": current.due is not None and current.due <= utcnow(),
        "updatedAt": ts(row.updated_at),
        "ticks": [_tick_view(t) for t in store.recent_ticks(session, RECENT_TICKS)],
    }


def _tick_view(tick: ScheduleTick) -> dict[str, Any]:
    return {
        "dueAt": ts(tick.due_at),
        "firedAt": ts(tick.fired_at),
        "outcome": tick.outcome,
        "jobId": tick.job_id,
        "reason": tick.reason,
        "missed": tick.missed,
    }
