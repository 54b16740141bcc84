"""The passes every worker runs in the background, every ``reaper_seconds``: recovery of
lost work, the vulnerability data's refresh and re-match, lost callbacks, housekeeping.

Each pass runs on its own: one that fails is logged and the others still run. Work a
pass decides on is claimed cluster-wide (in the database or with a Redis key), so any
number of workers may run them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from worker import housekeeping, rematch, vuln_import
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# How long a stopping worker waits for its pass in progress to finish.
JOIN_SECONDS = 15
# This worker, in the Redis keys that say which worker did a once-per-period job.
NODE = f"{socket.gethostname()}:{os.getpid()}"


def _reap(rt: Runtime) -> None:
    handled = rt.recovery.reap()
    if handled:
        log.warning("recovery took up jobs %s", handled)


PASSES: tuple[tuple[str, Callable[[Runtime], object]], ...] = (
    ("recovery", _reap),
    ("vulnerability data refresh", lambda rt: vuln_import.refresh_if_due(rt, NODE)),
    ("re-match", rematch.rematch_if_due),
    ("lost callbacks", lambda rt: rt.recovery.resend_lost_callbacks()),
    ("housekeeping", lambda rt: housekeeping.periodic(rt, NODE)),
)


def run_passes(rt: Runtime) -> None:
    """One round of every pass."""
    for name, run in PASSES:
        try:
            run(rt)
        except Exception:
            log.exception("%s pass failed", name)


class PeriodicPasses:
    """The background thread of one worker process."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self._runtime = runtime
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="periodic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        # Let a pass in progress finish: one cut off inside the admission lock would leave
        # the lock held until it expires, and scan requests refused meanwhile.
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_SECONDS)

    def _loop(self) -> None:
        rt = self._runtime()
        while True:
            run_passes(rt)
            if self._stop.wait(rt.settings.reaper_seconds):
                return
