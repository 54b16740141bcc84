"""Admission in process: one regular scan at a time, waiting in line, scope, the team
limit and the admission lock, over a real Redis and SQLite."""

from __future__ import annotations

import pytest

from core import keys, tasks
from models import ImageScan, JobKind, JobStatus, ScanJob
from models.db import transaction
from models.fencing import finish_job
from scheduler.errors import Busy, OutOfScope, ScanConflict, TeamOverLimit
from tests.scheduling.conftest import Scheduling, caller, image


def test_a_regular_scan_is_published_after_its_job_is_committed(scheduling: Scheduling):
    # When a sweep is asked for
    job = scheduling.admission.request_regular_all(caller())

    # Then its job is stored, and one orchestration message names it
    with scheduling.sessions() as session:
        stored = session.get_one(ScanJob, job.id)
        assert (stored.kind, stored.status, stored.team) == (
            JobKind.REGULAR_ALL,
            JobStatus.QUEUED,
            "team-a",
        )
        assert stored.published_at is not None
    assert scheduling.queued(tasks.QUEUE_REGULAR) == [(tasks.TASK_REGULAR, [job.id])]


def test_a_second_regular_scan_is_refused_naming_the_first_or_waits_in_line(
    scheduling: Scheduling,
):
    first = scheduling.admission.request_regular_all(caller())

    # When another is asked for without waiting, it is refused and nothing is stored
    with pytest.raises(ScanConflict) as refused:
        scheduling.admission.request_regular_image(image(), caller("team-b"))
    assert refused.value.job_id == first.id
    assert f"regular scan {first.id}" in str(refused.value)

    # When it is asked for with wait, it is stored but not published
    waiting = scheduling.admission.request_regular_image(image(), caller("team-b"), wait=True)
    with scheduling.sessions() as session:
        assert session.get_one(ScanJob, waiting.id).published_at is None
        assert session.query(ScanJob).count() == 2
    assert scheduling.queued(tasks.QUEUE_REGULAR) == [(tasks.TASK_REGULAR, [first.id])]

    # Then it starts by itself once the first has ended, and only then
    assert scheduling.admission.start_next_waiting() is None
    with transaction(scheduling.sessions) as session:
        finish_job(session, first.id, None, JobStatus.COMPLETED)
    assert scheduling.admission.start_next_waiting() == waiting.id
    assert scheduling.admission.start_next_waiting() is None
    assert scheduling.queued(tasks.QUEUE_REGULAR)[-1] == (tasks.TASK_REGULAR, [waiting.id])


def test_an_image_outside_the_configuration_is_refused_and_creates_nothing(
    scheduling: Scheduling,
):
    with pytest.raises(OutOfScope, match="no specification for registry"):
        scheduling.admission.request_on_demand(image(repo="other/web"), caller())
    with scheduling.sessions() as session:
        assert session.query(ScanJob).count() == 0
    assert scheduling.queued(tasks.QUEUE_ONDEMAND) == []


def test_a_team_is_held_to_its_on_demand_limit_and_other_teams_are_not(
    scheduling: Scheduling,
):
    # Given a limit of 3 per team
    jobs = scheduling.admission.request_on_demand_many(
        [image(tag=str(n)) for n in range(3)], caller("team-a")
    )
    ids = [job.id for job in jobs if isinstance(job, ScanJob)]
    assert len(ids) == 3

    # When the team asks for one more, it is told when to ask again
    with pytest.raises(TeamOverLimit) as over:
        scheduling.admission.request_on_demand(image(tag="4"), caller("team-a"))
    assert over.value.retry_after > 0
    assert "team team-a has 3 on-demand scans waiting or running" in str(over.value)

    # Then another team is not affected, and every job waits in its team's list with a slot
    other = scheduling.admission.request_on_demand(image(tag="4"), caller("team-b"))
    assert scheduling.waiting("team-a") == ids
    assert scheduling.waiting("team-b") == [other.id]
    slots = scheduling.queued(tasks.QUEUE_ONDEMAND)
    assert slots == [(tasks.TASK_ONDEMAND_NEXT, [])] * 4

    # And a finished job frees its place under the limit
    with transaction(scheduling.sessions) as session:
        finish_job(session, ids[0], None, JobStatus.COMPLETED)
    scheduling.admission.request_on_demand(image(tag="5"), caller("team-a"))


def test_an_on_demand_job_holds_the_image_it_was_asked_for(scheduling: Scheduling):
    job = scheduling.admission.request_on_demand(image(tag="2.1"), caller())
    with scheduling.sessions() as session:
        [item] = session.query(ImageScan).filter_by(job_id=job.id)
    assert (item.registry_host, item.repository, item.tag, item.digest) == (
        "127.0.0.1:5999",
        "app/web",
        "2.1",
        "",
    )
    assert item.registry_url == "http://127.0.0.1:5999"
    assert job.target == {
        "registry": "http://127.0.0.1:5999",
        "repo": "app/web",
        "tag": "2.1",
        "digest": "",
    }


def test_a_request_stuck_behind_another_admission_is_told_to_try_again(
    scheduling: Scheduling,
):
    # Given another process holding the admission lock (and a short wait for it)
    scheduling.admission.wait_seconds = 0.3
    held = scheduling.redis.lock(keys.ADMISSION_LOCK, timeout=30)
    assert held.acquire(blocking=False)
    try:
        # When a regular scan is asked for, it gives up after a few seconds
        with pytest.raises(Busy):
            scheduling.admission.request_regular_all(caller())
    finally:
        held.release()
    # Then nothing was stored or published, and the next request is admitted
    with scheduling.sessions() as session:
        assert session.query(ScanJob).count() == 0
    scheduling.admission.request_regular_all(caller())


def test_stop_flags_the_running_scan_and_leaves_waiting_ones_in_line(scheduling: Scheduling):
    running = scheduling.admission.request_regular_all(caller())
    waiting = scheduling.admission.request_regular_all(caller(), wait=True)

    stopped = scheduling.admission.stop_regular()

    assert stopped is not None and stopped.id == running.id
    assert stopped.status is JobStatus.STOPPING
    assert scheduling.redis.exists(keys.stop_flag(running.id))
    with scheduling.sessions() as session:
        assert session.get_one(ScanJob, waiting.id).status is JobStatus.QUEUED


def test_the_team_limit_holds_across_api_processes_without_counting_every_request(
    scheduling: Scheduling,
):
    # Given two API processes on one database and Redis (limit 3 per team)
    other = scheduling.recovery_of_another_worker().admission
    first = scheduling.admission.request_on_demand(image(tag="1"), caller("team-a"))

    # When the team's scans are asked for through either process
    other.request_on_demand(image(tag="2"), caller("team-a"))
    scheduling.admission.request_on_demand(image(tag="3"), caller("team-a"))

    # Then the bound they share in Redis counts all three, and the fourth is refused
    # with the database's count, whichever process it reaches
    assert int(scheduling.redis.get(keys.team_active("team-a")) or 0) == 3
    for admission in (other, scheduling.admission):
        with pytest.raises(TeamOverLimit, match="has 3 on-demand scans waiting or running"):
            admission.request_on_demand(image(tag="4"), caller("team-a"))

    # And once a scan ended, the bound (still 3) does not refuse what the database allows
    with transaction(scheduling.sessions) as session:
        finish_job(session, first.id, None, JobStatus.COMPLETED)
    other.request_on_demand(image(tag="5"), caller("team-a"))
    assert int(scheduling.redis.get(keys.team_active("team-a")) or 0) == 3


def test_the_team_limit_is_counted_in_the_database_when_redis_lost_the_bound(
    scheduling: Scheduling,
):
    # Given a team at its limit, and a Redis that lost everything (restart, eviction)
    for n in range(3):
        scheduling.admission.request_on_demand(image(tag=str(n)), caller("team-a"))
    scheduling.forget_redis()

    # When the team asks for one more, the database's count still refuses it
    with pytest.raises(TeamOverLimit, match="has 3 on-demand scans"):
        scheduling.admission.request_on_demand(image(tag="x"), caller("team-a"))

    # And the bound starts again from that count, with a time to live
    assert int(scheduling.redis.get(keys.team_active("team-a")) or 0) == 3
    assert 0 < scheduling.redis.ttl(keys.team_active("team-a")) <= keys.TEAM_ACTIVE_TTL_SECONDS
