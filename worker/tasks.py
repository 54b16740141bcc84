"""Celery tasks: thin wrappers that take ids, never ORM objects, and call plain functions."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from collections.abc import Callable

import requests
from celery.signals import worker_ready, worker_shutdown

from core import fair
from worker import callbacks, housekeeping, images, regular, vulndb
from worker.app import app
from worker.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

CALLBACK_RETRIES = 5
# How long a stopping worker waits for its periodic pass to finish.
REAPER_JOIN_SECONDS = 15


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


@app.task(name="regscan.scan_on_demand")
def scan_on_demand(job_id: int) -> None:
    images.scan_on_demand(get_runtime(), job_id)


@app.task(name="regscan.scan_on_demand_next")
def scan_on_demand_next() -> None:
    """A slot on the on-demand queue: run the next job of the team whose turn it is."""
    rt = get_runtime()
    job_id = fair.pop(rt.redis)
    if job_id is not None:
        images.scan_on_demand(rt, job_id)


@app.task(name="regscan.rematch")
def rematch() -> None:
    vulndb.rematch(get_runtime())


# Transient failures back off exponentially (1 s, 2 s, 4 s, ... at most 10 min) with full
# jitter, so receivers coming back up are not hit by every sender at once; anything else
# (4xx, a bad URL) is recorded and not retried.
@app.task(
    name="regscan.deliver_callback",
    bind=True,
    autoretry_for=(callbacks.RetryableDelivery, requests.ConnectionError, requests.Timeout),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=CALLBACK_RETRIES,
)
def deliver_callback(self, job_id: int) -> None:
    callbacks.deliver(get_runtime(), job_id, attempt=self.request.retries + 1)


# -- the reaper: every worker looks for scans whose worker died ----------------------

_reaper_stop = threading.Event()
_reaper: threading.Thread | None = None
_NODE = f"{socket.gethostname()}:{os.getpid()}"


def _reap(rt: Runtime) -> None:
    handled = rt.scheduler.reap()
    if handled:
        log.warning("reaper took up jobs %s", handled)


# Each pass on its own: one that fails is logged and the others still run.
_PASSES: tuple[tuple[str, Callable[[Runtime], object]], ...] = (
    ("reaper", _reap),
    ("vulnerability data", lambda rt: vulndb.periodic(rt, _NODE)),
    ("lost callbacks", lambda rt: rt.scheduler.resend_lost_callbacks()),
    ("housekeeping", lambda rt: housekeeping.periodic(rt, _NODE)),
)


def _reap_forever() -> None:
    rt = get_runtime()
    while True:
        for name, run in _PASSES:
            try:
                run(rt)
            except Exception:
                log.exception("%s pass failed", name)
        if _reaper_stop.wait(rt.settings.reaper_seconds):
            return


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    global _reaper
    _reaper = threading.Thread(target=_reap_forever, name="reaper", daemon=True)
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs: object) -> None:
    # Let a pass in progress finish: one cut off inside the admission lock would leave
    # the lock held until it expires, and scan requests refused meanwhile.
    _reaper_stop.set()
    if _reaper is not None:
        _reaper.join(timeout=REAPER_JOIN_SECONDS)
