"""Recovery in process: work whose worker died, or whose queue entry was lost, is taken
up again exactly once, over a real Redis and SQLite."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from core import fair, keys, tasks
from models import JobStatus, ScanJob, image_scans, jobs
from models.base import utcnow
from models.db import transaction
from models.fencing import claim_regular, finish_job
from scheduler.scope import Spec, load_specs
from tests.scheduling.conftest import Scheduling, caller, image


def _silent_since(scheduling: Scheduling, job_id: int, seconds: float) -> None:
    """The job's last heartbeat was ``seconds`` ago: its worker stopped beating then."""
    with transaction(scheduling.sessions) as session:
        session.get_one(ScanJob, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)


def _drain(scheduling: Scheduling, queue: str) -> None:
    scheduling.redis.delete(queue)


def _spec(scheduling: Scheduling) -> Spec:
    with scheduling.sessions() as session:
        [spec] = load_specs(session)
    return spec


# -- workers that died -------------------------------------------------------------------


def test_a_regular_scan_whose_lease_holder_died_is_published_again_once(
    scheduling: Scheduling,
):
    # Given a sweep claimed by a worker that then died (its lock expired, no heartbeat)
    job = scheduling.admission.request_regular_all(caller())
    with transaction(scheduling.sessions) as session:
        claim_regular(session, job.id, token=1)
    _silent_since(scheduling, job.id, 10)
    _drain(scheduling, tasks.QUEUE_REGULAR)

    # When two workers' recovery passes look
    first = scheduling.recovery.reap()
    second = scheduling.recovery_of_another_worker().reap()

    # Then one of them published it again, once
    assert (first, second) == ([job.id], [])
    assert scheduling.queued(tasks.QUEUE_REGULAR) == [(tasks.TASK_REGULAR, [job.id])]


def test_a_live_lease_holder_is_left_alone(scheduling: Scheduling):
    job = scheduling.admission.request_regular_all(caller())
    with transaction(scheduling.sessions) as session:
        claim_regular(session, job.id, token=1)
    _silent_since(scheduling, job.id, 10)
    scheduling.redis.set(keys.REGULAR_LOCK, "holder", ex=30)  # its heartbeat renews the lock

    assert scheduling.recovery.reap() == []


def test_a_scan_lost_too_often_is_failed_saying_why(scheduling: Scheduling):
    # Given a sweep taken up as often as max_attempts (2) allows
    job = scheduling.admission.request_regular_all(caller())
    for token in (1, 2):
        with transaction(scheduling.sessions) as session:
            claim_regular(session, job.id, token=token)
    _silent_since(scheduling, job.id, 10)

    assert scheduling.recovery.reap() == [job.id]

    with scheduling.sessions() as session:
        failed = session.get_one(ScanJob, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and "worker lost 2 times" in failed.error


def test_an_on_demand_scan_whose_worker_went_silent_is_handed_out_again(
    scheduling: Scheduling,
):
    job = scheduling.admission.request_on_demand(image(), caller())
    assert fair.pop(scheduling.redis) == job.id
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id) is not None
    _silent_since(scheduling, job.id, scheduling.settings.ondemand_stale_seconds + 1)
    _drain(scheduling, tasks.QUEUE_ONDEMAND)

    assert scheduling.recovery.reap() == [job.id]
    assert scheduling.queued(tasks.QUEUE_ONDEMAND) == [(tasks.TASK_ONDEMAND, [job.id, 1])]


# -- queue entries that were lost --------------------------------------------------------


def test_on_demand_jobs_lost_with_redis_are_queued_again_exactly_once(scheduling: Scheduling):
    # Given two teams' queued on-demand jobs, and a Redis that lost them
    a = scheduling.admission.request_on_demand(image(tag="1"), caller("team-a"))
    b = scheduling.admission.request_on_demand(image(tag="2"), caller("team-b"))
    scheduling.forget_redis()

    # When recovery looks before they have waited ondemand_requeue_seconds, nothing moves
    assert scheduling.recovery.requeue_lost_on_demand() == []

    # When it looks after that, from two workers at once
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)
    requeued = scheduling.recovery.requeue_lost_on_demand()
    again = scheduling.recovery_of_another_worker().requeue_lost_on_demand()

    # Then each job is back in its team's list once, with one slot to run it
    assert (sorted(requeued), again) == (sorted([a.id, b.id]), [])
    assert scheduling.waiting("team-a") == [a.id]
    assert scheduling.waiting("team-b") == [b.id]
    assert scheduling.queued(tasks.QUEUE_ONDEMAND) == [(tasks.TASK_ONDEMAND_NEXT, [])] * 2

    # And a later pass, after the same wait, leaves them where they are
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)
    assert scheduling.recovery.requeue_lost_on_demand() == []


def test_an_on_demand_job_whose_api_died_before_pushing_it_is_queued_and_frees_the_limit(
    scheduling: Scheduling,
):
    # Given an API process that committed a job and died before pushing its id
    with transaction(scheduling.sessions) as session:
        job = jobs.create_job(session, jobs.JobKind.ON_DEMAND, caller("team-a"))
        spec = _spec(scheduling)
        image_scans.add_target(session, job, spec, image())
    assert scheduling.waiting("team-a") == []

    # When recovery has looked after the wait
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)
    assert scheduling.recovery.reap() == [job.id]

    # Then a worker's slot takes it up, and once it ended it no longer counts against the
    # team's limit (3): three more are accepted
    assert fair.pop(scheduling.redis) == job.id
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id) is not None
        finish_job(session, job.id, None, JobStatus.COMPLETED)
    scheduling.admission.request_on_demand_many(
        [image(tag=str(n)) for n in range(3)], caller("team-a")
    )


def test_a_job_pushed_twice_runs_once(scheduling: Scheduling):
    # Given a job whose id reached its team's list twice (recovery pushed it while a
    # worker that had popped it was starting it)
    job = scheduling.admission.request_on_demand(image(), caller())
    fair.push(scheduling.redis, "team-a", [job.id])

    # When two slots take it up, only the first one starts it
    assert fair.pop(scheduling.redis) == job.id
    assert fair.pop(scheduling.redis) == job.id
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id) is not None
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id) is None


def test_a_job_waiting_its_turn_is_not_queued_again(scheduling: Scheduling):
    job = scheduling.admission.request_on_demand(image(), caller())
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)

    assert scheduling.recovery.requeue_lost_on_demand() == []
    assert scheduling.waiting("team-a") == [job.id]


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.COMPLETED])
def test_only_queued_jobs_are_requeued(scheduling: Scheduling, status: JobStatus):
    job = scheduling.admission.request_on_demand(image(), caller())
    scheduling.forget_redis()
    with transaction(scheduling.sessions) as session:
        session.get_one(ScanJob, job.id).status = status
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)

    assert scheduling.recovery.requeue_lost_on_demand() == []


def test_a_team_whose_slot_was_lost_gets_a_spare_one_once(scheduling: Scheduling):
    # Given a job waiting in its team's list whose slot message was lost (a worker killed
    # after taking it, say)
    job = scheduling.admission.request_on_demand(image(), caller("team-a"))
    _drain(scheduling, tasks.QUEUE_ONDEMAND)

    # When recovery looks before the job has waited ondemand_requeue_seconds, then after
    assert scheduling.recovery.nudge_waiting_teams() == []
    time.sleep(scheduling.settings.ondemand_requeue_seconds + 0.1)
    nudged = scheduling.recovery.nudge_waiting_teams()
    again = scheduling.recovery_of_another_worker().nudge_waiting_teams()

    # Then one spare slot is published, and the job is still waiting for it
    assert (nudged, again) == (["team-a"], [])
    assert scheduling.queued(tasks.QUEUE_ONDEMAND) == [(tasks.TASK_ONDEMAND_NEXT, [])]
    assert scheduling.waiting("team-a") == [job.id]


def test_a_run_interrupted_midway_is_resumed_once(scheduling: Scheduling):
    # Given a job started (attempt 1) whose run was interrupted by a database outage, and
    # that recovery also picked up as silent
    job = scheduling.admission.request_on_demand(image(), caller())
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id) is not None

    # When both try to resume the run on attempt 1, only the first does
    with transaction(scheduling.sessions) as session:
        resumed = jobs.start_job(session, job.id, resume=1)
    with transaction(scheduling.sessions) as session:
        assert jobs.start_job(session, job.id, resume=1) is None
    assert resumed is not None and resumed.attempts == 2
