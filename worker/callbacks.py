"""Completion callbacks: a job's final state, POSTed to the ``callbackUrl`` it was asked
with, signed so that the receiver can trust it.

The body is the job view of ``GET /registry/scans/{id}`` as compact JSON. The receiver
checks ``X-Regscan-Signature: sha256=<hex>``, the HMAC-SHA256 under its team's callback
key (``GET /api/v1/callbacks/key``; the team is named in ``X-Regscan-Team``) of
``<X-Regscan-Timestamp>.<body>`` (the timestamp header's decimal Unix seconds, a dot,
then the exact body bytes), and refuses old timestamps, so that a captured callback
cannot be replayed later.

The URL is checked again as it is sent (core/callbacks.py): the connection goes to the
address that was checked, never to what the name resolves to a moment later. An attempt
has an overall deadline; only the receiver's status is kept, never its body, and
transport failures are recorded in one word, so a callback cannot be used to read from,
or probe, what the receiver's network holds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from typing import Any

from core.callbacks import Allowed, Destination, RefusedDestination, destination, sign, team_key
from core.views import job_view
from models import ScanJob
from models import callbacks as store
from models.db import transaction
from worker.runtime import Runtime

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Regscan-Signature"
TIMESTAMP_HEADER = "X-Regscan-Timestamp"
TEAM_HEADER = "X-Regscan-Team"
UNREACHABLE = "receiver unreachable"


class RetryableDelivery(Exception):
    """Trying again may help: the receiver was unreachable, or answered 5xx or 429."""


def encode(view: dict[str, Any]) -> bytes:
    return json.dumps(view, separators=(",", ":"), sort_keys=True).encode()


def deliver(rt: Runtime, job_id: int, attempt: int) -> None:
    """POST the job's final state once; every attempt is recorded. Raises
    :class:`RetryableDelivery` when trying again may help."""
    with rt.sessions() as session:
        job = session.get(ScanJob, job_id)
        if job is None or not job.callback_url or not job.status.is_final:
            return
        if store.delivered(session, job_id):
            return  # a duplicate message: the receiver already has it
        url, team, body = job.callback_url, job.team, encode(job_view(job))
    secret = rt.settings.callback_secret
    if secret is None:
        _record(rt, job_id, attempt, url, None, "REGSCAN_CALLBACK_SECRET is not set on the worker")
        return
    try:
        where = destination(url, Allowed.parse(rt.settings.callback_allow))
    except RefusedDestination as exc:
        _record(rt, job_id, attempt, url, None, str(exc))  # final: the URL will not change
        return
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "regscan-callback",
        TEAM_HEADER: team,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(team_key(secret.get_secret_value(), team), timestamp, body),
    }
    try:
        status = post(where, body, headers, rt.settings.callback_timeout)
    except OSError:
        _record(rt, job_id, attempt, url, None, UNREACHABLE)
        raise RetryableDelivery(f"job={job_id} callback receiver unreachable") from None
    error = "" if 200 <= status < 300 else f"HTTP {status}"
    _record(rt, job_id, attempt, url, status, error)
    if status >= 500 or status == 429:
        raise RetryableDelivery(f"job={job_id} callback answered {status}")


def post(where: Destination, body: bytes, headers: dict[str, str], deadline: float) -> int:
    """POST ``body`` to the checked address; the status of the answer. The whole attempt
    (connect, TLS, send, the answer's head) ends by ``deadline`` seconds, however slowly
    the receiver trickles bytes; its body is never read."""
    connection = _connection(where, deadline)
    watchdog = threading.Timer(deadline, _cut, args=(connection,))
    watchdog.start()
    try:
        connection.request("POST", where.path, body=body, headers=headers)
        return connection.getresponse().status
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(f"unusable answer: {type(exc).__name__}") from None
    finally:
        watchdog.cancel()
        connection.close()


def _connection(where: Destination, timeout: float) -> http.client.HTTPConnection:
    if where.scheme == "https":
        return _PinnedHTTPS(where.host, where.port, where.addresses, timeout)
    return _PinnedHTTP(where.host, where.port, where.addresses, timeout)


def _connect(addresses: tuple[str, ...], port: int, timeout: float | None) -> socket.socket:
    """A connection to the first of the checked addresses that takes one."""
    failure: OSError = OSError("no address")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            failure = exc
    raise failure


def _cut(connection: http.client.HTTPConnection) -> None:
    """The deadline passed: end the attempt by shutting its socket."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the addresses that were checked; the Host header still names the host."""

    def __init__(self, host: str, port: int, addresses: tuple[str, ...], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """As :class:`_PinnedHTTP`, over TLS verified against the host's name."""

    def __init__(self, host: str, port: int, addresses: tuple[str, ...], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.addresses = addresses

    def connect(self) -> None:
        sock = _connect(self.addresses, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _record(
    rt: Runtime, job_id: int, attempt: int, url: str, status: int | None, error: str
) -> None:
    log.info("job=%s callback attempt=%s status=%s %s", job_id, attempt, status, error)
    with transaction(rt.sessions) as session:
        store.record(session, job_id, attempt, url, status, error)
