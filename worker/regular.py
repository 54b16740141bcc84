"""Orchestration of one regular scan: discovery, bounded dispatch, stop, finish.

The orchestrator runs while it holds the regular-scan lease. It writes every
discovered image as a pending row first, then hands at most ``scanners`` batches of
images (one task each, ``worker/batches.py``) per specification to the image queue at
a time, so the broker never holds a sweep's whole backlog. Stop is a Redis flag,
checked before each hand-out, and the job's status in the database, read at most once
a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from core import keys
from core.logs import log_context
from models import ItemStatus, JobKind, JobStatus, ScanJob, image_scans, jobs
from models.base import older_than
from models.db import transaction
from models.fencing import Fenced, claim_regular, fence, finish_job
from models.image_scans import IN_FLIGHT, item_fields
from scanner.errors import ScanError
from scanner.registry.client import RegistryClient
from scanner.registry.images import newest_first
from scheduler.scope import Spec, load_specs
from worker.lease import Lease
from worker.runtime import Runtime

log = logging.getLogger(__name__)

DONE = "done"
BUSY = "busy"
POLL_SECONDS = 0.2
STATUS_READ_SECONDS = 1.0

# Set when this worker process begins a warm shutdown (worker/tasks.py): an orchestrator
# hands its sweep to another worker instead of running it to its end, so a rolling
# restart does not wait for a sweep that may take hours.
SHUTTING_DOWN = threading.Event()


class HandOff(Exception):
    """This worker is stopping: the sweep goes on elsewhere."""


def run_regular_scan(rt: Runtime, job_id: int) -> str:
    """Run (or resume) a regular scan. ``BUSY`` means: another scan holds the slot."""
    with rt.sessions() as session:
        job = session.get(ScanJob, job_id)
    if job is None or job.status.is_final:
        return DONE
    lease = Lease(rt, job_id)
    token = lease.acquire()
    if token is None:
        # A job that never started waits for the slot; a started one is either run
        # by a live holder (this message is a duplicate) or will be handed over by
        # the reaper once the holder's lock expires.
        return BUSY if job.status is JobStatus.QUEUED else DONE
    try:
        with transaction(rt.sessions) as session:
            claimed = claim_regular(session, job_id, token)
        if claimed is None:
            return DONE
        with log_context(job=job_id, team=claimed.team, image=claimed.target_name):
            log.info("job=%s started token=%s attempt=%s", job_id, token, claimed.attempts)
            lease.start_heartbeat()
            Sweep(rt, claimed, lease).run()
        rt.admission.job_ended(job_id)
    except Fenced as exc:
        log.warning("job=%s gave up: %s", job_id, exc)
    except HandOff:
        with transaction(rt.sessions) as session:
            # A hand-off is not a worker lost: it does not count toward max_attempts.
            jobs.give_back_attempt(session, job_id, token)
        lease.release()  # first, so that the next holder finds the slot free
        rt.publisher.regular_scan(job_id)
        log.info("job=%s handed to another worker: this one is stopping", job_id)
        return DONE
    finally:
        lease.release()
    rt.admission.start_next_waiting()
    return DONE


class Sweep:
    def __init__(self, rt: Runtime, job: ScanJob, lease: Lease) -> None:
        self.rt = rt
        self.job = job
        self.lease = lease
        self.token = lease.token
        with rt.sessions() as session:
            self.specs = load_specs(session)
        self._stopping = job.status is JobStatus.STOPPING
        self._status_read_at = time.monotonic()
        # Per specification, the item ids of each batch handed out by this orchestrator.
        self._batches: dict[int, list[set[int]]] = {}

    def run(self) -> None:
        if self.job.discovered_at is None and not self.stop_requested():
            self.discover()
        if self.stop_requested():
            self.stop()
        else:
            self.dispatch()

    def stop_requested(self) -> bool:
        """Whether the user stopped the scan. Raises :class:`Fenced` once the lease is
        lost and :class:`HandOff` once this worker is stopping."""
        if self.lease.lost:
            raise Fenced(f"job {self.job.id}: lease lost")
        if SHUTTING_DOWN.is_set():
            raise HandOff
        if self.rt.redis.exists(keys.stop_flag(self.job.id)):
            return True
        return self._stopping_in_database()

    def _stopping_in_database(self) -> bool:
        """The stop is also written to the job row: a Redis that restarted empty has lost
        the flag, but not the user's word. Read at most once a second."""
        now = time.monotonic()
        if now - self._status_read_at >= STATUS_READ_SECONDS:
            self._status_read_at = now
            with self.rt.sessions() as session:
                status = session.scalar(select(ScanJob.status).where(ScanJob.id == self.job.id))
            self._stopping = status is JobStatus.STOPPING
        return self._stopping

    # -- discovery ----------------------------------------------------------------

    def discover(self) -> None:
        """Write every image in scope as a pending item. A stop cuts discovery short: what
        was found is kept, but the job is not marked discovered, so it ends stopped and
        not complete."""
        batch: list[dict[str, Any]] = []
        for spec in self.specs:
            try:
                for item in self._discover_spec(spec):
                    batch.append(item)
                    if len(batch) >= self.rt.settings.dispatch_batch:
                        self._save(batch)
                        batch = []
            except ScanError as exc:
                self._note(f"discovery in {spec.address.host}: {exc}")
            if self.stop_requested():
                break
        self._save(batch, final=True, complete=not self.stop_requested())

    def _discover_spec(self, spec: Spec) -> Iterator[dict[str, Any]]:
        with self.rt.registry_client(spec.address.base_url, spec.credential_id) as client:
            for repo in self._repositories(client, spec):
                if self.stop_requested():
                    return
                for tag in self._tags(client, spec, repo):
                    yield item_fields(spec, repo, tag)

    def _repositories(self, client: RegistryClient, spec: Spec) -> Iterator[str]:
        if not spec.lists_catalog:
            if spec.covers_repository(spec.repository):
                yield spec.repository
            return
        yield from (r for r in client.catalog() if spec.covers_repository(r))

    def _tags(self, client: RegistryClient, spec: Spec, repo: str) -> list[str]:
        tags = [t for t in client.tags(repo) if spec.covers_tag(t)]
        if spec.cap and len(tags) > spec.cap:
            ordered = newest_first(client, repo, tags, checkpoint=self._checkpoint)
            tags = [tag for tag, _created in ordered[: spec.cap]]
        return tags

    def _checkpoint(self) -> None:
        if self.lease.lost:
            raise Fenced(f"job {self.job.id}: lease lost")

    def _save(
        self, batch: list[dict[str, Any]], final: bool = False, complete: bool = True
    ) -> None:
        with transaction(self.rt.sessions) as session:
            fence(session, self.job.id, self.token)
            image_scans.add_items(session, self.job.id, batch)
            # The total grows batch by batch, so progress shows discovery as it goes.
            image_scans.set_total(session, self.job.id, discovered=final and complete)

    def _note(self, message: str) -> None:
        log.warning("job=%s %s", self.job.id, message)
        with transaction(self.rt.sessions) as session:
            fence(session, self.job.id, self.token)
            jobs.append_job_error(session, self.job.id, message)

    # -- dispatch -----------------------------------------------------------------

    def dispatch(self) -> None:
        stuck_after = self.rt.settings.stuck_image_seconds
        while not self.stop_requested():
            with transaction(self.rt.sessions) as session:
                fence(session, self.job.id, self.token)
                image_scans.requeue_stuck_items(session, self.job.id, older_than(stuck_after))
                in_flight = image_scans.in_flight_ids_by_spec(session, self.job.id)
                pending = image_scans.pending_by_spec(session, self.job.id)
                if not in_flight and not pending:
                    self._finish(session, JobStatus.COMPLETED)
                    return
                handed = self._hand_out(session, in_flight, pending)
            for batch in handed:
                self._publish(batch)
            time.sleep(POLL_SECONDS)
        self.stop()

    def _hand_out(
        self, session: Any, in_flight: dict[int, set[int]], pending: dict[int, int]
    ) -> list[list[tuple[int, int]]]:
        """Batches of pending images, one task each: a specification's ``scanners`` are
        that many tasks at once. A batch holds at most ``sweep_batch`` images, fewer near
        the end, so that every scanner gets a share of what is left."""
        scanners = {s.position: s.scanners for s in self.specs}
        handed: list[list[tuple[int, int]]] = []
        for position, waiting in pending.items():
            busy = self._busy(position, in_flight.get(position, set()))
            slots = max(scanners.get(position, 1), 1)
            size = min(self.rt.settings.sweep_batch, -(-waiting // slots))
            for _ in range(slots - busy):
                batch = image_scans.queue_items(session, self.job.id, position, size, self.token)
                if not batch:
                    break
                self._batches.setdefault(position, []).append({i for i, _a in batch})
                handed.append(batch)
        return handed

    def _busy(self, position: int, in_flight: set[int]) -> int:
        """Tasks of a specification still at work: batches with an image in flight, and
        each image in flight that no batch of this orchestrator handed out."""
        batches = [b for b in self._batches.get(position, []) if b & in_flight]
        self._batches[position] = batches
        tracked = set().union(*batches) if batches else set()
        return len(batches) + len(in_flight - tracked)

    def _publish(self, batch: list[tuple[int, int]]) -> None:
        self.rt.publisher.image_scans(batch)

    # -- the end ------------------------------------------------------------------

    def stop(self) -> None:
        """No new images; images in flight end at their next checkpoint (bounded wait)."""
        with transaction(self.rt.sessions) as session:
            fence(session, self.job.id, self.token)
            image_scans.skip_items(session, self.job.id, [ItemStatus.PENDING])
        deadline = time.monotonic() + self.rt.settings.stop_grace_seconds
        while time.monotonic() < deadline and not self.lease.lost:
            with self.rt.sessions() as session:
                if not image_scans.in_flight_by_spec(session, self.job.id):
                    break
            time.sleep(POLL_SECONDS)
        with transaction(self.rt.sessions) as session:
            image_scans.skip_items(session, self.job.id, IN_FLIGHT)
            # A stop that arrives after discovery, when every image is already done,
            # left nothing out: the scan is complete.
            left_out = image_scans.item_counts(session, self.job.id).get(ItemStatus.SKIPPED, 0)
            job = session.get(ScanJob, self.job.id, populate_existing=True)
            complete = job is not None and job.discovered_at is not None and not left_out
            self._finish(session, JobStatus.COMPLETED if complete else JobStatus.STOPPED)
        self.rt.redis.delete(keys.stop_flag(self.job.id))

    def _finish(self, session: Any, status: JobStatus) -> None:
        finish_job(session, self.job.id, self.token, status)
        kind = "all" if self.job.kind is JobKind.REGULAR_ALL else "image"
        log.info("job=%s kind=regular-%s finished status=%s", self.job.id, kind, status.value)
