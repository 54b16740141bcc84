"""Celery tasks: thin wrappers that take ids, never ORM objects, and call plain functions."""

from __future__ import annotations

import logging
import random
from typing import Any

from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from core import fair
from core.logs import clear_context, set_context
from core.settings import get_settings
from core.telemetry import TALLY, Flusher
from worker import batches, callbacks, images, regular, rematch
from worker.app import app
from worker.periodic import PeriodicPasses
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

CALLBACK_RETRIES = 5


@app.task(name="regscan.run_regular_scan", bind=True, max_retries=None)
def run_regular_scan(self, job_id: int) -> None:
    if regular.run_regular_scan(get_runtime(), job_id) == regular.BUSY:
        # The slot is still held (the previous scan is finishing, or its dead
        # holder's lock has not expired yet): try again in a while, with jitter.
        ttl = get_runtime().settings.lock_ttl_seconds
        raise self.retry(countdown=ttl / 3 * random.uniform(0.5, 1.5))


# Acknowledged when it starts, not when it returns: a batch runs for seconds, and a worker
# holding unacknowledged messages when its broker connection drops (Redis restarting)
# fails while handing them back, and dies. Nothing is lost: a batch's images are taken up
# again by the sweep (its next lease holder, or its check for stuck images), never by
# redelivery, which would come only after the broker's visibility timeout.
@app.task(name="regscan.scan_image", acks_late=False)
def scan_image(*items: int) -> None:
    """A batch of a sweep's images, as flat (item id, attempt) pairs: a message of one
    pair, as earlier versions sent, is a batch of one."""
    if len(items) % 2:
        raise ValueError(f"scan_image takes (item id, attempt) pairs, got {len(items)} numbers")
    batches.scan_batch(get_runtime(), list(zip(items[::2], items[1::2], strict=True)))


# A run a service interrupted is taken up again with backoff (1 s, 2 s, 4 s, ... at most
# 30 s, with jitter), for about five minutes; after that recovery takes the job up.
ONDEMAND_RETRIES = 12


@app.task(name="regscan.scan_on_demand", bind=True, max_retries=ONDEMAND_RETRIES)
def scan_on_demand(self: Any, job_id: int, attempt: int | None = None) -> None:
    """An on-demand job run again by id, resuming the run on ``attempt``: its worker
    went silent (recovery), or the database or Redis went away while it ran."""
    try:
        images.scan_on_demand(get_runtime(), job_id, resume=attempt)
    except images.Interrupted as exc:
        log.warning("job=%s %s; trying again", job_id, exc.__cause__)
        raise self.retry(
            args=[job_id, exc.attempt], countdown=_backoff(self.request.retries)
        ) from None


@app.task(name="regscan.scan_on_demand_next")
def scan_on_demand_next() -> None:
    """A slot on the on-demand queue: run the next job of the team whose turn it is.

    A job that cannot be run (it ran already, or was withdrawn) does not use the slot up:
    the next one is taken."""
    rt = get_runtime()
    while (job_id := fair.pop(rt.redis)) is not None:
        try:
            if images.scan_on_demand(rt, job_id):
                return
        except images.Interrupted as exc:
            # The job left its team's list with this slot: hand it on by id, to be run
            # again once the service is back, rather than leave it with no queue entry.
            log.warning("job=%s %s; running it again", job_id, exc.__cause__)
            rt.publisher.on_demand(job_id, exc.attempt)
            return


def _backoff(retries: int) -> float:
    return min(30.0, 2.0**retries) * random.uniform(0.5, 1.0)


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


# -- logging: the regscan command configured it; each task's lines name the task -------


@setup_logging.connect
def _keep_our_logging(**_kwargs: object) -> None:
    """Connected, so Celery leaves the handlers ``regscan worker`` set up alone (the
    format chosen with REGSCAN_LOG_FORMAT, secrets masked)."""


@task_prerun.connect
def _task_context(task: object = None, **_kwargs: object) -> None:
    set_context(task=getattr(task, "name", None))


@task_postrun.connect
def _task_context_done(**_kwargs: object) -> None:
    clear_context()


# -- the periodic passes and the metrics flush: started when the worker is ready,
# stopped with it ------------------------------------------------------------------------

_passes = PeriodicPasses(get_runtime)
_flusher = Flusher(TALLY, lambda: get_runtime().redis, get_settings().metrics_flush_seconds)


@worker_ready.connect
def _start_passes(**_kwargs: object) -> None:
    _passes.start()
    _flusher.start()


@worker_shutting_down.connect
def _hand_off_sweeps(**_kwargs: object) -> None:
    # A warm shutdown waits for running tasks: a sweep's orchestration hands its sweep on
    # at its next checkpoint, and images in flight finish (bounded by registry timeouts).
    regular.SHUTTING_DOWN.set()


@worker_shutdown.connect
def _stop_passes(**_kwargs: object) -> None:
    _passes.stop()
    _flusher.stop()  # the last counts reach the shared totals before the process ends
