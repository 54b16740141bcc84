"""Celery tasks: thin wrappers that take ids, never ORM objects, and call plain functions."""

from __future__ import annotations

import logging
import random

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy.exc import InterfaceError, OperationalError

from core import fair
from worker import callbacks, images, regular, rematch
from worker.app import app
from worker.periodic import PeriodicPasses
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

CALLBACK_RETRIES = 5
# What the database raises while it is unreachable or restarting.
DATABASE_AWAY = (OperationalError, InterfaceError)


@app.task(name="regscan.run_regular_scan", bind=True, max_retries=None)
def run_regular_scan(self, job_id: int) -> None:
    if regular.run_regular_scan(get_runtime(), job_id) == regular.BUSY:
        # The slot is still held (the previous scan is finishing, or its dead
        # holder's lock has not expired yet): try again in a while, with jitter.
        ttl = get_runtime().settings.lock_ttl_seconds
        raise self.retry(countdown=ttl / 3 * random.uniform(0.5, 1.5))


@app.task(name="regscan.scan_image")
def scan_image(item_id: int, attempt: int) -> None:
    images.scan_item(get_runtime(), item_id, attempt)


# While the database is away, a job is run again with backoff (1 s, 2 s, 4 s, ... at most
# 30 s, full jitter), for about five minutes; after that recovery takes it up.
@app.task(
    name="regscan.scan_on_demand",
    autoretry_for=DATABASE_AWAY,
    retry_backoff=True,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=12,
)
def scan_on_demand(job_id: int) -> None:
    """An on-demand job run again by id: its worker went silent (recovery), or the
    database went away while it ran."""
    images.scan_on_demand(get_runtime(), job_id, again=True)


@app.task(name="regscan.scan_on_demand_next")
def scan_on_demand_next() -> None:
    """A slot on the on-demand queue: run the next job of the team whose turn it is."""
    rt = get_runtime()
    job_id = fair.pop(rt.redis)
    if job_id is None:
        return
    try:
        images.scan_on_demand(rt, job_id)
    except DATABASE_AWAY as exc:
        # The job left its team's list with this slot: hand it on by id, to be run again
        # once the database answers, rather than leave it queued with no queue entry.
        log.warning("job=%s database unavailable (%s); running it again", job_id, exc)
        rt.publisher.on_demand(job_id)


@app.task(name="regscan.rematch")
def rematch_next() -> None:
    rematch.rematch_next(get_runtime())


# Transient failures back off exponentially (1 s, 2 s, 4 s, ... at most 10 min) with full
# jitter, so receivers coming back up are not hit by every sender at once; anything else
# (4xx, a bad URL) is recorded and not retried.
@app.task(
    name="regscan.deliver_callback",
    bind=True,
    autoretry_for=(callbacks.RetryableDelivery,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=CALLBACK_RETRIES,
)
def deliver_callback(self, job_id: int) -> None:
    callbacks.deliver(get_runtime(), job_id, attempt=self.request.retries + 1)


# -- the periodic passes: started when the worker is ready, stopped with it ----------

_passes = PeriodicPasses(get_runtime)


@worker_ready.connect
def _start_passes(**_kwargs: object) -> None:
    _passes.start()


@worker_shutting_down.connect
def _hand_off_sweeps(**_kwargs: object) -> None:
    # A warm shutdown waits for running tasks: a sweep's orchestration hands its sweep on
    # at its next checkpoint, and images in flight finish (bounded by registry timeouts).
    regular.SHUTTING_DOWN.set()


@worker_shutdown.connect
def _stop_passes(**_kwargs: object) -> None:
    _passes.stop()
