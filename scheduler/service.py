"""The one place that creates scan jobs and decides what may run when.

Every entry point (API, schedules, push events) comes through :class:`Scheduler`:
it checks scope, applies the one-regular-scan-at-a-time policy (refuse, or wait
in line), commits the job row, and only then publishes the Celery task, so a
worker never sees a job the database does not have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import fair, keys
from core.reference import parse_registry
from core.settings import Settings
from core.tasks import Publisher
from models import JobKind, JobStatus, RegistrySpec, ScanJob
from models import callbacks as callback_store
from models import services as svc
from models.base import utcnow
from models.db import transaction
from models.jobs import REGULAR_KINDS
from scheduler.errors import (
    Busy,
    NoSpecifications,
    NothingSelected,
    OutOfScope,
    ScanConflict,
    TeamOverLimit,
)
from scheduler.scope import Spec, describe_miss, find_spec

log = logging.getLogger(__name__)

# What a team over its on-demand limit is told to wait before asking again.
ON_DEMAND_RETRY_AFTER_SECONDS = 5
# Callbacks of jobs that ended longer ago than this are not published again.
CALLBACK_RESEND_HORIZON = timedelta(days=1)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    registry: str
    repo: str
    tag: str = ""
    digest: str = ""

    def as_target(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "repo": self.repo,
            "tag": self.tag,
            "digest": self.digest,
        }


def load_specs(session: Session) -> list[Spec]:
    rows = session.scalars(select(RegistrySpec).order_by(RegistrySpec.position))
    return [Spec.from_row(row) for row in rows]


class Scheduler:
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
        self._next_callback_check = 0.0  # time.monotonic() of this process

    # -- asking for scans ---------------------------------------------------------

    def request_regular_all(
        self,
        requested_by: str,
        *,
        source: str = "api",
        wait: bool = False,
        team: str = "",
        callback_url: str = "",
    ) -> ScanJob:
        """A regular scan of every image in scope."""
        with self.sessions() as session:
            if not load_specs(session):
                raise NoSpecifications(
                    "no registry specification is configured, so there is nothing to scan; "
                    "add one with PUT /api/v1/settings/registry"
                )
        return self._admit_regular(
            JobKind.REGULAR_ALL, requested_by, source, wait, team=team, callback_url=callback_url
        )

    def request_regular_image(
        self,
        ref: ImageRef,
        requested_by: str,
        *,
        source: str = "api",
        wait: bool = False,
        team: str = "",
        callback_url: str = "",
    ) -> ScanJob:
        """A regular scan of one image; it takes the regular-scan slot like a sweep."""
        with self.sessions() as session:
            spec = _scope_of(session, ref)
        return self._admit_regular(
            JobKind.REGULAR_IMAGE,
            requested_by,
            source,
            wait,
            [(ref, spec)],
            ref.as_target(),
            team=team,
            callback_url=callback_url,
        )

    def request_selection(
        self,
        refs: Sequence[ImageRef],
        selection: dict[str, Any],
        requested_by: str,
        *,
        source: str = "api",
        wait: bool = False,
        team: str = "",
        callback_url: str = "",
        strict: bool = True,
    ) -> ScanJob:
        """One regular scan of chosen images (a selection, or a campaign's query result).

        With ``strict`` the first image outside the scope refuses the whole request, with
        its reason; otherwise images outside it (say, found in stored data from before the
        configuration changed) are left out and listed in the job's selection.
        """
        with self.sessions() as session:
            specs = load_specs(session)
        targets, outside = _split_by_scope(specs, refs)
        if outside and strict:
            ref = outside[0]
            host = parse_registry(ref.registry).host
            raise OutOfScope(describe_miss(specs, host, ref.repo, ref.tag))
        if not targets:
            raise NothingSelected(
                "the selection names no image in scope, so there is nothing to scan"
            )
        if outside:
            selection = {**selection, "outOfScope": [_name(ref) for ref in outside[:100]]}
        return self._admit_regular(
            JobKind.REGULAR_SELECT,
            requested_by,
            source,
            wait,
            targets,
            None,
            selection,
            team=team,
            callback_url=callback_url,
        )

    def request_on_demand(
        self,
        ref: ImageRef,
        requested_by: str,
        *,
        source: str = "api",
        team: str = "",
        callback_url: str = "",
    ) -> ScanJob:
        """An on-demand scan: never blocked by, and never blocking, a regular scan."""
        [job] = self.request_on_demand_many(
            [ref], requested_by, source=source, team=team, callback_url=callback_url
        )
        if isinstance(job, OutOfScope):
            raise job
        return job

    def request_on_demand_many(
        self,
        refs: Sequence[ImageRef],
        requested_by: str,
        *,
        source: str = "api",
        team: str = "",
        callback_url: str = "",
    ) -> list[ScanJob | OutOfScope]:
        """One on-demand job per image, all committed together and then published; an
        image outside the configuration gets the reason instead of a job."""
        answers: list[ScanJob | OutOfScope] = []
        with transaction(self.sessions) as session:
            self._check_team_limit(session, team, len(refs))
            specs = load_specs(session)
            for ref in refs:
                try:
                    spec = _spec_for(specs, ref)
                except OutOfScope as exc:
                    answers.append(exc)
                    continue
                job = svc.create_job(
                    session,
                    kind=JobKind.ON_DEMAND,
                    requested_by=requested_by,
                    source=source,
                    target=ref.as_target(),
                    team=team,
                    callback_url=callback_url,
                )
                _add_target_item(session, job, spec, ref)
                answers.append(job)
        jobs = [job for job in answers if isinstance(job, ScanJob)]
        fair.push(self.redis, team, [job.id for job in jobs])
        for job in jobs:
            # One slot per job; which job a slot runs is decided fairly when it runs.
            self.publisher.on_demand_slot()
            log.info("job=%s kind=on-demand team=%s published", job.id, team)
        return answers

    def _check_team_limit(self, session: Session, team: str, adding: int) -> None:
        """A team may have so many on-demand scans waiting or running, no more."""
        limit = self.settings.team_ondemand_limit
        waiting = svc.active_on_demand(session, team)
        if waiting + adding > limit:
            raise TeamOverLimit(
                f"team {team or '(none)'} has {waiting} on-demand scans waiting or running; "
                f"the limit is {limit} per team, so {adding} more cannot be queued now. "
                "Try again when some have finished.",
                retry_after=ON_DEMAND_RETRY_AFTER_SECONDS,
            )

    def _admit_regular(
        self,
        kind: JobKind,
        requested_by: str,
        source: str,
        wait: bool,
        targets: Sequence[tuple[ImageRef, Spec]] = (),
        target: dict[str, Any] | None = None,
        selection: dict[str, Any] | None = None,
        *,
        team: str = "",
        callback_url: str = "",
    ) -> ScanJob:
        with self._admission():
            with transaction(self.sessions) as session:
                active = svc.active_regular_jobs(session)
                if active and not wait:
                    first = active[0]
                    raise ScanConflict(first.id, first.status.value, _describe(first))
                job = svc.create_job(
                    session,
                    kind=kind,
                    requested_by=requested_by,
                    source=source,
                    target=target,
                    wait=bool(active),
                    publish_now=not active,
                    team=team,
                    callback_url=callback_url,
                )
                job.selection = selection
                if targets:
                    _add_target_items(session, job, targets)
            if not active:
                self._publish_regular(job.id)
        return job

    def _publish_regular(self, job_id: int) -> None:
        self.publisher.regular_scan(job_id)
        log.info("job=%s kind=regular published", job_id)

    def job_ended(self, job_id: int) -> None:
        """Publish the completion callback of an ended job that asked for one. Call it
        after the final state is committed, so the callback reads that state."""
        with self.sessions() as session:
            job = session.get(ScanJob, job_id)
        if job is None or not job.status.is_final or not job.callback_url:
            return
        self._publish_callback(job_id)
        log.info("job=%s callback published", job_id)

    def _publish_callback(self, job_id: int) -> None:
        self.publisher.callback(job_id)

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
            lost = callback_store.never_attempted(
                session, now - CALLBACK_RESEND_HORIZON, now - timedelta(seconds=after_seconds)
            )
        resent = []
        for job_id in lost:
            if self.redis.set(
                keys.callback_resent(job_id), "1", nx=True, ex=keys.CALLBACK_RESENT_SECONDS
            ):
                self._publish_callback(job_id)
                resent.append(job_id)
        if resent:
            log.warning("callbacks of jobs %s were never attempted; published again", resent)
        return resent

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        """Serialise "is a regular scan active? then admit" across API processes."""
        lock = self.redis.lock(keys.ADMISSION_LOCK, timeout=10, blocking_timeout=5)
        if not lock.acquire():
            raise Busy("another scan request is being admitted right now; try again")
        try:
            yield
        finally:
            # Expired (the holder took over 10 s): nothing of ours to release.
            with contextlib.suppress(LockError):
                lock.release()

    # -- stopping and what follows -----------------------------------------------

    def stop_regular(self) -> ScanJob | None:
        """Ask the running regular scan to stop. Waiting scans stay in line."""
        with transaction(self.sessions) as session:
            running = [j for j in svc.active_regular_jobs(session) if j.published_at]
            if not running:
                return None
            job = running[0]
            self.redis.set(keys.stop_flag(job.id), "1", ex=keys.STOP_FLAG_TTL_SECONDS)
            svc.request_stop(session, job.id)
        log.info("job=%s stop requested", job.id)
        with self.sessions() as session:
            return session.get(ScanJob, job.id)

    def start_next_waiting(self) -> int | None:
        """Publish the oldest waiting regular scan if no regular scan holds the slot."""
        # Every worker calls this each reaper pass: look without the admission lock
        # first, so passes with nothing waiting do not queue up scan requests behind it.
        with self.sessions() as session:
            if not svc.any_regular_waiting(session):
                return None
        try:
            with self._admission():
                with transaction(self.sessions) as session:
                    active = svc.active_regular_jobs(session)
                    if not active or any(j.published_at for j in active):
                        return None
                    job_id = active[0].id
                    if not svc.mark_published(session, job_id):
                        return None
                self._publish_regular(job_id)
                return job_id
        except Busy:
            # Whoever holds the admission lock is admitting or starting a scan right
            # now; the reaper looks again shortly.
            return None

    # -- finding work whose worker died ------------------------------------------------

    def reap(self) -> list[int]:
        """Re-publish scans whose worker went silent; return the ids handled."""
        handled = self._reap_regular() + self._reap_on_demand()
        self.start_next_waiting()
        return handled

    def _reap_regular(self) -> list[int]:
        if self.redis.exists(keys.REGULAR_LOCK):
            return []  # a live holder renews the lock; nothing is orphaned
        stale = svc.older_than(self.settings.lock_ttl_seconds)
        statuses = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STOPPING)
        return self._republish(statuses, stale, *REGULAR_KINDS)

    def _reap_on_demand(self) -> list[int]:
        stale = svc.older_than(self.settings.ondemand_stale_seconds)
        # Only scans a worker took and went silent on: waiting ones wait their team's turn.
        return self._republish((JobStatus.RUNNING,), stale, JobKind.ON_DEMAND)

    def _republish(self, statuses, stale, *kinds: JobKind) -> list[int]:
        handled = []
        failed: list[int] = []
        with self.sessions() as session:
            candidates = svc.stale_jobs(session, statuses, stale)
        for job_id in candidates:
            with transaction(self.sessions) as session:
                job = session.get(ScanJob, job_id)
                if job is None or job.kind not in kinds or job.published_at is None:
                    continue
                if not svc.touch_if_unchanged(session, job_id, job.heartbeat_at):
                    continue
                if job.attempts >= self.settings.max_attempts:
                    reason = (
                        f"worker lost {job.attempts} times (no heartbeat for "
                        f"{self.settings.lock_ttl_seconds:g}s); giving up"
                    )
                    svc.finish_job(session, job_id, job.fencing_token, JobStatus.FAILED, reason)
                    handled.append(job_id)
                    failed.append(job_id)
                    continue
            if job is None or job.status.is_final:
                continue
            if job.kind is JobKind.ON_DEMAND:
                self.publisher.on_demand(job_id)
            else:
                self.publisher.regular_scan(job_id)
            log.warning("job=%s worker silent; republished attempt=%s", job_id, job.attempts + 1)
            handled.append(job_id)
        for job_id in failed:
            self.job_ended(job_id)
        return handled


def _describe(job: ScanJob) -> str:
    what = f"image {job.target_name}" if job.target else "all images in scope"
    return (
        f"{what}, asked by {job.requested_by or 'unknown'} at {job.created_at:%Y-%m-%dT%H:%M:%SZ}"
    )


def _scope_of(session: Session, ref: ImageRef) -> Spec:
    """The specification covering ``ref``; :class:`OutOfScope` says why none does."""
    return _spec_for(load_specs(session), ref)


def _spec_for(specs: list[Spec], ref: ImageRef) -> Spec:
    host = parse_registry(ref.registry).host
    spec = find_spec(specs, host, ref.repo, ref.tag)
    if spec is None:
        raise OutOfScope(describe_miss(specs, host, ref.repo, ref.tag))
    return spec


def _split_by_scope(
    specs: list[Spec], refs: Sequence[ImageRef]
) -> tuple[list[tuple[ImageRef, Spec]], list[ImageRef]]:
    inside, outside = [], []
    for ref in refs:
        spec = find_spec(specs, parse_registry(ref.registry).host, ref.repo, ref.tag)
        if spec is None:
            outside.append(ref)
        else:
            inside.append((ref, spec))
    return inside, outside


def _name(ref: ImageRef) -> str:
    return f"{ref.registry}/{ref.repo}:{ref.tag}" if ref.tag else f"{ref.registry}/{ref.repo}"


def _add_target_items(
    session: Session, job: ScanJob, targets: Sequence[tuple[ImageRef, Spec]]
) -> None:
    """The images of a single-image or selected scan: discovered when the job is made."""
    if len(targets) == 1:
        ref, spec = targets[0]
        _add_target_item(session, job, spec, ref)
        return
    items = [
        {
            "spec_position": spec.position,
            "registry_url": spec.address.base_url,
            "credential_id": spec.credential_id,
            "os": spec.os,
            "registry_host": spec.address.host,
            "repository": ref.repo,
            "tag": ref.tag,
            "digest": ref.digest,
        }
        for ref, spec in targets
    ]
    svc.add_items(session, job.id, items)
    svc.set_total(session, job.id)


def _add_target_item(session: Session, job: ScanJob, spec: Spec, ref: ImageRef) -> None:
    svc.add_target(
        session,
        job,
        spec_position=spec.position,
        registry_url=spec.address.base_url,
        credential_id=spec.credential_id,
        os=spec.os,
        registry_host=spec.address.host,
        repository=ref.repo,
        tag=ref.tag,
        digest=ref.digest,
    )
