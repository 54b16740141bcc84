"""The regular-scan lease: a redis-py Lock with a TTL, renewed by a heartbeat thread,
plus a fencing token so a holder whose lease lapsed can no longer write as the owner.

Fencing tokens only grow, even across a Redis that lost its data: the counter is never
allowed below the highest token the database has seen."""

from __future__ import annotations

import contextlib
import logging
import threading

from redis import Redis
from redis.exceptions import LockError

from core import keys
from models import jobs
from models.db import transaction
from models.fencing import Fenced, fence
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# KEYS: the counter; ARGV: the floor. The next value, and never one at or below the floor.
_NEXT_TOKEN = """
local token = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if token <= floor then
  token = floor + 1
  redis.call('SET', KEYS[1], token)
end
return token
"""


def next_token(redis: Redis, floor: int) -> int:
    """The next fencing token: one more than the counter, and above ``floor`` (the highest
    token any job row holds), so a Redis restarted empty cannot hand out a token twice."""
    return int(redis.register_script(_NEXT_TOKEN)(keys=[keys.REGULAR_FENCE], args=[floor]))


class Lease:
    def __init__(self, rt: Runtime, job_id: int) -> None:
        self.rt = rt
        self.job_id = job_id
        self.token: int | None = None
        self._lock = rt.redis.lock(
            keys.REGULAR_LOCK, timeout=rt.settings.lock_ttl_seconds, thread_local=False
        )
        self._lost = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> int | None:
        """Take the lock without waiting; on success, draw a new fencing token and return
        it. None when another holder has the lock."""
        if not self._lock.acquire(blocking=False):
            return None
        with self.rt.sessions() as session:
            floor = jobs.highest_fencing_token(session)
        self.token = next_token(self.rt.redis, floor)
        return self.token

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._done.wait(self.rt.settings.heartbeat_seconds):
            try:
                self._lock.reacquire()  # back to the full TTL
                with transaction(self.rt.sessions) as session:
                    fence(session, self.job_id, self.token)
            except (LockError, Fenced) as exc:
                log.error("job=%s lease lost: %s", self.job_id, exc)
                self._lost.set()
                return
            except Exception:  # the database or Redis hiccuped; try again next beat
                log.exception("job=%s heartbeat failed", self.job_id)

    def release(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Expired or taken over: then there is nothing of ours to release.
        with contextlib.suppress(LockError):
            self._lock.release()
