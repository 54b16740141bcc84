"""Admission: the one place that creates scan jobs and decides what may run when.

Every entry point (the API, schedules, push events) asks :class:`Admission` for a
scan. It checks scope, applies the one-regular-scan-at-a-time policy (refuse, or
wait in line), holds a team to its on-demand limit, commits the job row, and only
then publishes the task, so a worker never sees a job the database does not have.
Stopping the running regular scan, and starting the next waiting one when it ends,
are decided here too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from redis import Redis
from redis.exceptions import LockError, RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core import fair, keys
from core.reference import ImageRef
from core.requester import Requester
from core.settings import Settings
from core.tasks import Publisher
from models import image_scans, jobs
from models.db import transaction
from models.image_scans import item_fields
from models.jobs import JobKind, ScanJob
from scheduler import team_limit
from scheduler.errors import (
    Busy,
    NoSpecifications,
    NothingSelected,
    OutOfScope,
    ScanConflict,
    TeamOverLimit,
    Unavailable,
)
from scheduler.scope import Spec, describe_miss, load_specs, spec_for, split_by_scope

log = logging.getLogger(__name__)

# What publishing raises when Redis is away: redis-py's own errors, and kombu's
# OperationalError around them once Celery gave up retrying.
PUBLISH_ERRORS = (RedisError, KombuOperationalError)

# What a team over its on-demand limit is told to wait before asking again.
ON_DEMAND_RETRY_AFTER_SECONDS = 5
# How long the admission lock lives, and how long a request waits for it.
ADMISSION_LOCK_SECONDS = 10
ADMISSION_WAIT_SECONDS = 5


class Admission:
    # How long a request waits for the admission lock before it is told to ask again.
    wait_seconds: float = ADMISSION_WAIT_SECONDS

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        redis: Redis,
        publisher: Publisher,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.publisher = publisher

    # -- regular scans -------------------------------------------------------------

    def request_regular_all(self, requester: Requester, *, wait: bool = False) -> ScanJob:
        """A regular scan of every image in scope."""
        with self.sessions() as session:
            if not load_specs(session):
                raise NoSpecifications(
                    "no registry specification is configured, so there is nothing to scan; "
                    "add one with PUT /api/v1/settings/registry"
                )
        return self._admit_regular(JobKind.REGULAR_ALL, requester, wait)

    def request_regular_image(
        self, ref: ImageRef, requester: Requester, *, wait: bool = False
    ) -> ScanJob:
        """A regular scan of one image; it takes the regular-scan slot like a sweep."""
        with self.sessions() as session:
            spec = spec_for(load_specs(session), ref)
        return self._admit_regular(
            JobKind.REGULAR_IMAGE, requester, wait, [(ref, spec)], ref.as_target()
        )

    def request_selection(
        self,
        refs: Sequence[ImageRef],
        selection: dict[str, Any],
        requester: Requester,
        *,
        wait: bool = False,
        strict: bool = True,
    ) -> ScanJob:
        """One regular scan of chosen images (a selection, or a campaign's query result).

        With ``strict`` the first image outside the scope refuses the whole request, with
        its reason; otherwise images outside it (say, found in stored data from before the
        configuration changed) are left out and listed in the job's selection.
        """
        with self.sessions() as session:
            specs = load_specs(session)
        targets, outside = split_by_scope(specs, refs)
        if outside and strict:
            ref = outside[0]
            raise OutOfScope(describe_miss(specs, ref.host, ref.repo, ref.tag))
        if not targets:
            raise NothingSelected(
                "the selection names no image in scope, so there is nothing to scan"
            )
        if outside:
            selection = {**selection, "outOfScope": [_name(ref) for ref in outside[:100]]}
        return self._admit_regular(
            JobKind.REGULAR_SELECT, requester, wait, targets, selection=selection
        )

    def _admit_regular(
        self,
        kind: JobKind,
        requester: Requester,
        wait: bool,
        targets: Sequence[tuple[ImageRef, Spec]] = (),
        target: dict[str, Any] | None = None,
        selection: dict[str, Any] | None = None,
    ) -> ScanJob:
        with self._admission():
            with transaction(self.sessions) as session:
                active = jobs.active_regular_jobs(session)
                if active and not wait:
                    first = active[0]
                    raise ScanConflict(first.id, first.status.value, _describe(first))
                job = jobs.create_job(
                    session,
                    kind,
                    requester,
                    target=target,
                    wait=bool(active),
                    publish_now=not active,
                )
                job.selection = selection
                _add_targets(session, job, targets)
            if not active:
                with self._or_withdraw([job.id]):
                    self._publish_regular(job.id)
        return job

    def _publish_regular(self, job_id: int) -> None:
        self.publisher.regular_scan(job_id)
        log.info("job=%s kind=regular published", job_id)

    # -- on-demand scans -----------------------------------------------------------

    def request_on_demand(
        self, ref: ImageRef, requester: Requester, *, pull_authorization: str = ""
    ) -> ScanJob:
        """An on-demand scan: never blocked by, and never blocking, a regular scan.

        ``pull_authorization`` (an HTTP Authorization value, as Harbor gives one) is what
        the worker sends the registry for this scan instead of the specification's
        credential; it is kept in Redis only, for the scan's lifetime (core/keys.py)."""
        [job] = self.request_on_demand_many([ref], requester, pull_authorization)
        if isinstance(job, OutOfScope):
            raise job
        return job

    def request_on_demand_many(
        self, refs: Sequence[ImageRef], requester: Requester, pull_authorization: str = ""
    ) -> list[ScanJob | OutOfScope]:
        """One on-demand job per image, all committed together and then published; an
        image outside the configuration gets the reason instead of a job."""
        answers: list[ScanJob | OutOfScope] = []
        with transaction(self.sessions) as session:
            self._check_team_limit(session, requester.team, len(refs))
            specs = load_specs(session)
            for ref in refs:
                try:
                    spec = spec_for(specs, ref)
                except OutOfScope as exc:
                    answers.append(exc)
                    continue
                job = jobs.create_on_demand(session, requester, ref.as_target())
                image_scans.add_target(session, job, spec, ref)
                answers.append(job)
        queued = [job for job in answers if isinstance(job, ScanJob)]
        ids = [job.id for job in queued]
        with self._or_withdraw(ids):
            if pull_authorization:
                # Before the jobs can be taken: their worker must find the credentials.
                for job_id in ids:
                    self.redis.set(
                        keys.pull_authorization(job_id),
                        pull_authorization,
                        ex=keys.PULL_AUTHORIZATION_TTL_SECONDS,
                    )
            fair.push(self.redis, requester.team, ids)
            # One slot per job; which job a slot runs is decided fairly when it runs.
            for _ in ids:
                self.publisher.on_demand_slot()
        for job in queued:
            log.info("job=%s kind=on-demand team=%s published", job.id, requester.team)
        return answers

    def _check_team_limit(self, session: Session, team: str, adding: int) -> None:
        """A team may have so many on-demand scans waiting or running, no more."""
        limit = self.settings.team_ondemand_limit
        admitted, waiting = team_limit.within_limit(
            self.redis, team, adding, limit, lambda: jobs.active_on_demand(session, team)
        )
        if not admitted:
            raise TeamOverLimit(
                f"team {team or '(none)'} has {waiting} on-demand scans waiting or running; "
                f"the limit is {limit} per team, so {adding} more cannot be queued now. "
                "Try again when some have finished.",
                retry_after=ON_DEMAND_RETRY_AFTER_SECONDS,
            )

    # -- stopping, and what follows the end of a job ------------------------------------

    def stop_regular(self) -> ScanJob | None:
        """Ask the running regular scan to stop. Waiting scans stay in line."""
        with transaction(self.sessions) as session:
            running = [j for j in jobs.active_regular_jobs(session) if j.published_at]
            if not running:
                return None
            job = running[0]
            self.redis.set(keys.stop_flag(job.id), "1", ex=keys.STOP_FLAG_TTL_SECONDS)
            jobs.request_stop(session, job.id)
        log.info("job=%s stop requested", job.id)
        with self.sessions() as session:
            return session.get(ScanJob, job.id)

    def start_next_waiting(self) -> int | None:
        """Publish the oldest waiting regular scan if no regular scan holds the slot."""
        # Every worker calls this each reaper pass: look without the admission lock
        # first, so passes with nothing waiting do not queue up scan requests behind it.
        with self.sessions() as session:
            if not jobs.any_regular_waiting(session):
                return None
        try:
            with self._admission():
                with transaction(self.sessions) as session:
                    active = jobs.active_regular_jobs(session)
                    if not active or any(j.published_at for j in active):
                        return None
                    job_id = active[0].id
                    if not jobs.mark_published(session, job_id):
                        return None
                self._publish_regular(job_id)
                return job_id
        except Busy:
            # Whoever holds the admission lock is admitting or starting a scan right
            # now; the reaper looks again shortly.
            return None

    def job_ended(self, job_id: int) -> None:
        """Publish the completion callback of an ended job that asked for one. Call it
        after the final state is committed, so the callback reads that state."""
        with self.sessions() as session:
            job = session.get(ScanJob, job_id)
        if job is None or not job.status.is_final or not job.callback_url:
            return
        self.publisher.callback(job_id)
        log.info("job=%s callback published", job_id)

    @contextlib.contextmanager
    def _or_withdraw(self, job_ids: list[int]) -> Iterator[None]:
        """Publish the committed jobs in the block; when Redis refuses, withdraw them and
        raise :class:`Unavailable`, so the caller is never told of a job that cannot run
        and a retry does not make a second one. Should the withdrawal fail too (the
        database went away as well), the jobs stay queued and recovery runs them."""
        try:
            yield
        except PUBLISH_ERRORS as exc:
            log.warning("jobs %s not published (%s); withdrawing them", job_ids, exc)
            try:
                with transaction(self.sessions) as session:
                    jobs.withdraw_jobs(session, job_ids)
            except SQLAlchemyError:
                log.exception("jobs %s could not be withdrawn; recovery will run them", job_ids)
            raise Unavailable(
                "the queue (Redis) did not take the scan, so nothing was queued; "
                "ask again in a few seconds"
            ) from None

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        """Serialise "is a regular scan active? then admit" across API processes."""
        lock = self.redis.lock(
            keys.ADMISSION_LOCK,
            timeout=ADMISSION_LOCK_SECONDS,
            blocking_timeout=self.wait_seconds,
        )
        if not lock.acquire():
            raise Busy("another scan request is being admitted right now; try again")
        try:
            yield
        finally:
            # Expired (the holder took over 10 s): nothing of ours to release.
            with contextlib.suppress(LockError):
                lock.release()


def _describe(job: ScanJob) -> str:
    what = f"image {job.target_name}" if job.target else "all images in scope"
    return (
        f"{what}, asked by {job.requested_by or 'unknown'} at {job.created_at:%Y-%m-%dT%H:%M:%SZ}"
    )


def _name(ref: ImageRef) -> str:
    return f"{ref.registry}/{ref.repo}:{ref.tag}" if ref.tag else f"{ref.registry}/{ref.repo}"


def _add_targets(session: Session, job: ScanJob, targets: Sequence[tuple[ImageRef, Spec]]) -> None:
    """The images of a single-image or selected scan: discovered when the job is made."""
    if len(targets) == 1:
        ref, spec = targets[0]
        image_scans.add_target(session, job, spec, ref)
    elif targets:
        items = [item_fields(spec, ref.repo, ref.tag, ref.digest) for ref, spec in targets]
        image_scans.add_items(session, job.id, items)
        image_scans.set_total(session, job.id)
