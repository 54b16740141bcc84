"""Scheduled sweeps: ``/settings/scan`` and ``regscan scheduler`` processes.

The schedulers are real processes over the stack's Redis and database, on a clock sped
up through ``REGSCAN_SCHEDULE_MIN_PERIOD_MS`` (periods of two seconds).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, select

from models import ScanJob, ScheduleTick
from scheduler.cadence import Cadence, InvalidSchedule, check_cron
from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer
from testbed.stack import Api, Stack, wait_for

PERIOD_MS = 2000
PERIOD = timedelta(milliseconds=PERIOD_MS)
DEFAULTS = {"registryScanPeriodMs": 86_400_000, "cron": "", "timezone": "UTC"}
# What a claimed tick says until its outcome is written.
CLAIMED = "the scheduler stopped before it asked for the sweep"


class Schedulers:
    """Starts and stops ``regscan scheduler`` processes of the stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.running: list[str] = []

    def start(self, *names: str) -> None:
        for name in names:
            self.stack.start_scheduler(name)
            self.running.append(name)

    def stop_all(self) -> None:
        """SIGTERM each; a clean stop exits 0."""
        codes = {name: self.stack.terminate(name) for name in self.running}
        self.running.clear()
        assert set(codes.values()) <= {0}, codes


@pytest.fixture
def schedulers(api: Api, stack: Stack, db) -> Iterator[Schedulers]:
    """No tick recorded before the test; none running and defaults back after it."""
    with db.begin() as session:
        session.execute(delete(ScheduleTick))
    s = Schedulers(stack)
    yield s
    s.stop_all()
    assert api.post("/api/v1/settings/scan", json=DEFAULTS).status_code == 200


def ticks(db) -> list[ScheduleTick]:
    with db() as session:
        return list(session.scalars(select(ScheduleTick).order_by(ScheduleTick.due_at)))


def settled(db, at_least: int) -> list[ScheduleTick] | None:
    """The ticks once ``at_least`` of them have their outcome written."""
    found = ticks(db)
    done = [t for t in found if t.reason != CLAIMED]
    return found if len(done) >= at_least and len(done) == len(found) else None


def scheduled_jobs(db, after_id: int) -> list[ScanJob]:
    with db() as session:
        query = select(ScanJob).where(ScanJob.source == "schedule", ScanJob.id > after_id)
        return list(session.scalars(query))


def last_job_id(db) -> int:
    with db() as session:
        return max(session.scalars(select(ScanJob.id)).all(), default=0)


def every(api: Api, period_ms: int = PERIOD_MS) -> None:
    body = {"registryScanPeriodMs": period_ms, "cron": "", "timezone": "UTC"}
    r = api.post("/api/v1/settings/scan", json=body)
    assert r.status_code == 200, r.text


def one_image(api: Api, pusher: Pusher, registry: RegistryServer, name: str) -> None:
    pusher.push_image(f"{name}/app", "1.0", {"app": b"1"})
    spec = {"version": "2", "registry": f"http://{registry.host}", "repository": f"{name}/*"}
    api.set_specs(spec)


def test_two_schedulers_fire_each_tick_once(
    api: Api, schedulers: Schedulers, pusher: Pusher, registry: RegistryServer, db, name
):
    # Given one small image in scope, a two-second period and two schedulers
    one_image(api, pusher, registry, name)
    before = last_job_id(db)
    every(api)
    schedulers.start("sched-a", "sched-b")

    # When they run for at least three ticks, then are stopped
    wait_for(lambda: settled(db, 3), 30, "three ticks")
    schedulers.stop_all()
    found = wait_for(lambda: settled(db, 3), 10, "the last outcome")

    # Then the ticks are consecutive due times, none lost, none doubled (a tick may
    # stand for earlier ones, by its count of missed ones, only on a starved machine)
    seen = [(t.due_at.isoformat(), t.outcome, t.missed, t.reason) for t in found]
    steps = [(b.due_at - a.due_at) / PERIOD - b.missed for a, b in itertools.pairwise(found)]
    assert steps == [1] * (len(found) - 1), seen
    assert {t.outcome for t in found} <= {"started", "skipped"}, seen
    # And each started tick asked for exactly one sweep; nothing else asked for one
    started = [t.job_id for t in found if t.outcome == "started"]
    assert started and len(set(started)) == len(started)
    jobs = scheduled_jobs(db, before)
    assert sorted(j.id for j in jobs) == sorted(started)
    assert {(j.kind.value, j.requested_by) for j in jobs} == {("regular-all", "schedule")}
    for job_id in started:
        assert api.wait_job(job_id)["status"] == "completed"


def test_a_tick_during_a_running_sweep_is_skipped(
    api: Api, schedulers: Schedulers, pusher: Pusher, slow_registry: FaultProxy, db, name
):
    # Given a sweep that takes several periods (three tags, one at a time, slow manifests)
    for tag in ("a", "b", "c"):
        pusher.push_image(f"{name}/slow", tag, {tag: tag.encode()})
    slow_registry.delay(1.5, path_prefix=f"/v2/{name}/slow/manifests")
    spec = {"version": "2", "registry": f"http://{slow_registry.host}", "repository": f"{name}/*"}
    api.set_specs({**spec, "scanners": 1})
    before = last_job_id(db)
    every(api)

    # When a scheduler runs while the first scheduled sweep is still going
    schedulers.start("sched-slow")
    found = wait_for(
        lambda: (f := settled(db, 2)) and any(t.outcome == "skipped" for t in f) and f,
        30,
        "a skipped tick",
    )
    schedulers.stop_all()

    # Then the tick found the sweep running and was recorded skipped, not queued
    first = next(t for t in found if t.outcome == "started")
    skipped = next(t for t in found if t.outcome == "skipped")
    assert skipped.job_id is None
    assert f"regular scan {first.job_id} was still " in skipped.reason
    assert "not queued" in skipped.reason
    assert [j.id for j in scheduled_jobs(db, before)] == [first.job_id]
    assert api.job(first.job_id)["status"] in ("queued", "running")


def test_a_restart_after_missed_ticks_fires_one_catch_up(
    api: Api, schedulers: Schedulers, pusher: Pusher, registry: RegistryServer, db, name
):
    # Given schedulers that fired a tick and were then all stopped for over three periods
    one_image(api, pusher, registry, name)
    every(api)
    schedulers.start("sched-c", "sched-d")
    wait_for(lambda: settled(db, 1), 30, "a first tick")
    schedulers.stop_all()
    last = ticks(db)[-1].due_at
    time.sleep(3.5 * PERIOD_MS / 1000)

    # When one scheduler starts again
    restarted = datetime.now(UTC)
    schedulers.start("sched-c")
    wait_for(lambda: (f := settled(db, 1)) and f[-1].due_at > last, 30, "a catch-up tick")
    schedulers.stop_all()

    # Then the missed due times were folded into one tick, the latest of them
    after = [t for t in ticks(db) if t.due_at > last]
    catch_up = after[0]
    assert catch_up.missed >= 2
    assert catch_up.due_at - last == (catch_up.missed + 1) * PERIOD
    assert restarted - PERIOD < catch_up.due_at <= datetime.now(UTC)
    assert all(t.missed == 0 for t in after[1:])
    assert catch_up.outcome == "started", catch_up.reason


def next_local(hour: int, minute: int, zone: str) -> datetime:
    """The next wall-clock ``hour:minute`` in ``zone``, in UTC."""
    tz = ZoneInfo(zone)
    now = datetime.now(tz)
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= now:
        candidate = (now + timedelta(days=1)).replace(
            hour=hour, minute=minute, second=0, microsecond=0
        )
    return candidate.replace(tzinfo=tz).astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_settings_show_the_next_run_and_change_only_what_is_given(api: Api, schedulers: Schedulers):
    # Given a cron schedule in a time zone
    r = api.post(
        "/api/v1/settings/scan", json={"cron": " 30  3 * * * ", "timezone": "Europe/Paris"}
    )
    assert r.status_code == 200, r.text

    # Then GET shows it, with the next run in UTC; a cron wins over the period
    got = api.get("/api/v1/settings/scan").json()
    assert (got["cron"], got["timezone"], got["schedule"]) == ("30 3 * * *", "Europe/Paris", "cron")
    assert got["registryScanPeriodMs"] == 86_400_000
    assert got["nextRunAt"] == iso(next_local(3, 30, "Europe/Paris"))
    assert got["overdue"] is False and got["ticks"] == []

    # When only the time zone changes, the cron stays
    got = api.post("/api/v1/settings/scan", json={"timezone": "UTC"}).json()
    assert (got["cron"], got["nextRunAt"]) == ("30 3 * * *", iso(next_local(3, 30, "UTC")))

    # When the cron is cleared, the period (a day, from midnight UTC) applies
    got = api.post("/api/v1/settings/scan", json={"cron": ""}).json()
    assert got["schedule"] == "period"
    assert got["nextRunAt"] == iso(next_local(0, 0, "UTC"))

    # When the period is 0 as well, nothing is scheduled
    got = api.post("/api/v1/settings/scan", json={"registryScanPeriodMs": 0}).json()
    assert (got["schedule"], got["nextRunAt"]) == ("disabled", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"registryScanPeriodMs": 1000}, "must be 0 (no periodic scans) or at least 2000"),
        ({"registryScanPeriodMs": -1}, "at least 2000 milliseconds; got -1"),
        ({"registryScanPeriodMs": "86400000"}, "registryScanPeriodMs: Input should be"),
        ({"cron": "61 * * * *"}, "cron '61 * * * *' is not a valid cron expression"),
        ({"cron": "* * *"}, "has 3 field(s); write 5"),
        ({"cron": "*/5 * * * * *"}, "has 6 field(s); write 5"),
        ({"timezone": "Mars/Olympus"}, "'Mars/Olympus' is not a known IANA time zone"),
        ({"everySoOften": 5}, "everySoOften: unknown field"),
        ([86_400_000], "body must be an object"),
    ],
)
def test_invalid_settings_are_refused_and_change_nothing(
    api: Api, schedulers: Schedulers, body, message
):
    # Given the default schedule
    before = api.get("/api/v1/settings/scan").json()

    # When a bad value is posted
    r = api.post("/api/v1/settings/scan", json=body)

    # Then it is refused with a message that says what to fix, and nothing changed
    assert r.status_code == 400
    assert message in r.json()["err"]
    assert api.get("/api/v1/settings/scan").json() == before


def test_cadence_counts_from_the_epoch_and_folds_missed_due_times():
    # Given a two-second period and a per-second cron (allowed only when asked for)
    period = Cadence(2000)
    moment = datetime(2024, 5, 1, 12, 0, 1, 500_000, tzinfo=UTC)

    # Then due times are aligned, strictly after the moment, and a downtime folds
    due = period.next_after(moment)
    assert due == datetime(2024, 5, 1, 12, 0, 2, tzinfo=UTC)
    assert period.next_after(due) == due + PERIOD
    assert period.fold(due, due + 7 * PERIOD + PERIOD / 2) == (due + 7 * PERIOD, 7)
    with pytest.raises(InvalidSchedule):
        check_cron("*/10 * * * * *", seconds_allowed=False)
    expr = check_cron("*/10 * * * * *", seconds_allowed=True)
    cron = Cadence(0, expr, seconds=True)
    assert cron.next_after(moment) == datetime(2024, 5, 1, 12, 0, 10, tzinfo=UTC)
    assert cron.fold(cron.next_after(moment), moment + timedelta(seconds=45))[1] == 3
