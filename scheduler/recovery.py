"""Recovery: finding work whose worker, API process or Redis entry was lost, and taking
it up again. Every worker runs these passes (``worker/periodic.py``); each decision is
claimed in the database first, so many workers act once.

- A regular scan whose lease holder died (its Redis lock expired) is published again;
  the next holder resumes it under a new fencing token without redoing finished images.
- An on-demand scan whose worker went silent is published again, or failed after
  ``max_attempts``.
- An on-demand scan still queued whose id is in no team's list in Redis (Redis lost
  it, or the API died between committing the job and pushing it) is pushed again; a
  team whose oldest listed job has waited long gets a spare slot (its own may be lost).
- A completion callback that was never attempted is published again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from core import fair, keys
from core.settings import Settings
from core.tasks import Publisher
from models import callbacks, jobs
from models.base import older_than, utcnow
from models.db import transaction
from models.fencing import finish_job
from models.jobs import REGULAR_KINDS, JobKind, JobStatus, ScanJob
from scheduler.admission import Admission

log = logging.getLogger(__name__)

# Callbacks of jobs that ended longer ago than this are not published again.
CALLBACK_RESEND_HORIZON = timedelta(days=1)


class Recovery:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        redis: Redis,
        publisher: Publisher,
        admission: Admission,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.publisher = publisher
        self.admission = admission
        self._next_callback_check = 0.0  # time.monotonic() of this process

    def reap(self) -> list[int]:
        """Take up scans whose worker died, or whose queue entry was lost; the ids handled.
        Then start the next waiting regular scan if the slot is free."""
        handled = self._reap_regular() + self._reap_on_demand() + self.requeue_lost_on_demand()
        self.nudge_waiting_teams()
        self.admission.start_next_waiting()
        return handled

    # -- workers that died ---------------------------------------------------------------

    def _reap_regular(self) -> list[int]:
        if self.redis.exists(keys.REGULAR_LOCK):
            return []  # a live holder renews the lock; nothing is orphaned
        stale = older_than(self.settings.lock_ttl_seconds)
        statuses = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STOPPING)
        return self._republish(statuses, stale, REGULAR_KINDS)

    def _reap_on_demand(self) -> list[int]:
        stale = older_than(self.settings.ondemand_stale_seconds)
        # Only scans a worker took and went silent on: waiting ones are requeue's concern.
        return self._republish((JobStatus.RUNNING,), stale, (JobKind.ON_DEMAND,))

    def _republish(
        self, statuses: Iterable[JobStatus], stale: datetime, kinds: Iterable[JobKind]
    ) -> list[int]:
        handled = []
        failed: list[int] = []
        with self.sessions() as session:
            candidates = jobs.stale_jobs(session, statuses, stale)
        for job_id in candidates:
            with transaction(self.sessions) as session:
                job = session.get(ScanJob, job_id)
                if job is None or job.kind not in kinds or job.published_at is None:
                    continue
                if not jobs.touch_if_unchanged(session, job_id, job.heartbeat_at):
                    continue
                if job.attempts >= self.settings.max_attempts:
                    reason = (
                        f"worker lost {job.attempts} times (no heartbeat for "
                        f"{self.settings.lock_ttl_seconds:g}s); giving up"
                    )
                    finish_job(session, job_id, job.fencing_token, JobStatus.FAILED, reason)
                    handled.append(job_id)
                    failed.append(job_id)
                    continue
            if job is None or job.status.is_final:
                continue
            if job.kind is JobKind.ON_DEMAND:
                self.publisher.on_demand(job_id, job.attempts)
            else:
                self.publisher.regular_scan(job_id)
            log.warning("job=%s worker silent; republished attempt=%s", job_id, job.attempts + 1)
            handled.append(job_id)
        for job_id in failed:
            self.admission.job_ended(job_id)
        return handled

    # -- queue entries that were lost ----------------------------------------------------

    def requeue_lost_on_demand(self) -> list[int]:
        """Push again the on-demand jobs queued for over ``ondemand_requeue_seconds``
        whose id is in no team's list: Redis lost it, or the API that made the job died
        before pushing it. Each is claimed in the database first, so it is pushed once
        however many workers look; a worker that already took it (popped, not yet
        started) wins, as a job runs only if it is still queued when it starts."""
        waiting = defaultdict(list)
        with self.sessions() as session:
            cutoff = older_than(self.settings.ondemand_requeue_seconds)
            for job_id, team, seen in jobs.waiting_on_demand(session, cutoff):
                waiting[team].append((job_id, seen))
        requeued = []
        for team, entries in waiting.items():
            listed = fair.waiting(self.redis, team)
            for job_id, seen in entries:
                if job_id in listed:
                    continue  # waiting its team's turn
                with transaction(self.sessions) as session:
                    if not jobs.touch_if_unchanged(session, job_id, seen):
                        continue
                fair.push(self.redis, team, [job_id])
                self.publisher.on_demand_slot()
                requeued.append(job_id)
        if requeued:
            log.warning("on-demand jobs %s were in no queue; queued again", requeued)
        return requeued

    def nudge_waiting_teams(self) -> list[str]:
        """Publish a spare slot for each team whose oldest listed job has waited over
        ``ondemand_requeue_seconds``: the slot that would run it may be lost (a worker
        killed after taking it, Redis failing between a push and its slot). A spare slot
        that finds nothing to run costs nothing. Once per period per team, cluster-wide."""
        nudged = []
        cutoff = older_than(self.settings.ondemand_requeue_seconds)
        for team in fair.teams(self.redis):
            head = fair.oldest(self.redis, team)
            if head is None:
                continue
            with self.sessions() as session:
                since = jobs.waiting_since(session, head)
            if since is None or since > cutoff:
                continue
            seconds = max(1, int(self.settings.ondemand_requeue_seconds))
            if self.redis.set(keys.fair_nudged(team), "1", nx=True, ex=seconds):
                self.publisher.on_demand_slot()
                nudged.append(team)
        if nudged:
            log.info("teams %s waited long: one more on-demand slot each", nudged)
        return nudged

    def resend_lost_callbacks(self) -> list[int]:
        """Publish again the callbacks of jobs that ended over ``callback_resend_seconds``
        ago (and within a day) with no delivery attempt: their worker ended them and died
        before publishing. Each is published again once cluster-wide; the delivery task
        skips a job whose receiver already took it.

        Looks at most twice per ``callback_resend_seconds`` in this process, however often
        it is called: the query reads a day of ended jobs.
        """
        after_seconds = self.settings.callback_resend_seconds
        if time.monotonic() < self._next_callback_check:
            return []
        self._next_callback_check = time.monotonic() + after_seconds / 2
        now = utcnow()
        with self.sessions() as session:
            lost = callbacks.never_attempted(
                session, now - CALLBACK_RESEND_HORIZON, now - timedelta(seconds=after_seconds)
            )
        resent = []
        for job_id in lost:
            if self.redis.set(
                keys.callback_resent(job_id), "1", nx=True, ex=keys.CALLBACK_RESENT_SECONDS
            ):
                self.publisher.callback(job_id)
                resent.append(job_id)
        if resent:
            log.warning("callbacks of jobs %s were never attempted; published again", resent)
        return resent
