"""How requests to a registry travel: retries, capped bodies, and failures in words.

Retries of idempotent requests (GET, HEAD) are left to urllib3's ``Retry`` on the
session's adapter, with a pause before every retry and a cap on ``Retry-After``.
Bodies are read with a size cap, so a hostile registry cannot make us buffer more
than we asked for. Sessions are kept per process (``SessionPool``), so scans one after
another reuse their connections.
"""

from __future__ import annotations

import random
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from scanner.errors import ScanError

_POOL_SIZE = 32  # connections kept open per host
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK = 64 << 10


class _RegistryRetry(Retry):
    """urllib3's ``Retry`` with a pause before every retry and a capped ``Retry-After``."""

    def get_backoff_time(self) -> float:
        # urllib3 retries the first failure at once; a registry that fails is usually
        # overloaded, so every retry waits, with jitter so that workers do not march in step.
        if not self.history:
            return 0.0
        delay = self.backoff_factor * 2 ** (len(self.history) - 1)
        return min(self.backoff_max, delay + random.uniform(0, self.backoff_jitter))

    def parse_retry_after(self, retry_after: str) -> float:
        # A registry must not be able to park a worker for hours.
        return min(super().parse_retry_after(retry_after), self.backoff_max)


def retry_policy(retries: int, backoff: float, backoff_max: float) -> Retry:
    """Retries for GET/HEAD on lost connections, read timeouts and 429/5xx."""
    return _RegistryRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        allowed_methods=frozenset({"GET", "HEAD"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff,
        backoff_jitter=backoff,
        backoff_max=backoff_max,
        respect_retry_after_header=True,
        # Hand the last response back so its status can be reported.
        raise_on_status=False,
    )


def pause(attempt: int, backoff: float, backoff_max: float) -> None:
    """Wait before trying again after ``attempt`` failures, as the adapter's retries do:
    exponential, with jitter, capped."""
    time.sleep(min(backoff_max, backoff * 2**attempt + random.uniform(0, backoff)))


def read_capped(
    response: requests.Response, limit: int, what: str, error: type[ScanError]
) -> bytes:
    """Read the body, failing as soon as it grows past ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise error(f"{what} is {declared} bytes, over the limit of {limit}")
    body = bytearray()
    for chunk in response.iter_content(CHUNK):
        body += chunk
        if len(body) > limit:
            raise error(f"{what} is over the limit of {limit} bytes")
    return bytes(body)


def failure(exc: requests.RequestException, retries: int) -> str:
    """Say briefly why a request failed; requests wraps urllib3's reason in ``args[0]``."""
    cause: BaseException = exc
    if exc.args and isinstance(exc.args[0], BaseException):
        cause = exc.args[0]
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        return f"{describe(cause.reason)} (gave up after {retries} retries)"
    return describe(cause)


def describe(cause: BaseException) -> str:
    """A transport failure in a few words, for messages."""
    if isinstance(cause, ReadTimeoutError | requests.ReadTimeout):
        return "read timed out"
    if isinstance(cause, NewConnectionError):
        return f"cannot connect: {str(cause).rpartition(': ')[2]}"
    if isinstance(cause, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(cause, ProtocolError):
        return f"connection lost: {cause.args[-1] if cause.args else cause}"
    return str(cause) or type(cause).__name__


class SessionPool:
    """HTTP sessions kept for a whole process, one per registry and retry policy, so
    that scans one after another reuse their connections instead of opening (and over
    TLS, negotiating) new ones. Each session retries for every host, as a client's own
    does. Clients in several threads may share one: requests' connection pools are
    thread-safe, and nothing is mounted on a session after it is made.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._sessions: dict[tuple[str, int, float, float], requests.Session] = {}

    def session(
        self, base_url: str, retries: int, backoff: float, backoff_max: float
    ) -> requests.Session:
        """The session for this registry and policy, made the first time it is asked."""
        key = (base_url, retries, backoff, backoff_max)
        with self._guard:
            if key not in self._sessions:
                self._sessions[key] = retrying_session(retries, backoff, backoff_max)
            return self._sessions[key]

    def close(self) -> None:
        with self._guard:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()


def retrying_session(retries: int, backoff: float, backoff_max: float) -> requests.Session:
    session = requests.Session()
    # Room for every layer a worker's scans read at once, so none opens a connection
    # only to throw it away afterwards.
    adapter = HTTPAdapter(
        max_retries=retry_policy(retries, backoff, backoff_max), pool_maxsize=_POOL_SIZE
    )
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session
