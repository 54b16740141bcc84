"""Completion callbacks: a job's final state, POSTed to the ``callbackUrl`` it was asked
with, signed so that the receiver can trust it.

The body is the job view of ``GET /registry/scans/{id}`` as compact JSON. The receiver
checks ``X-Regscan-Signature: sha256=<hex>``, the HMAC-SHA256 under the shared
``REGSCAN_CALLBACK_SECRET`` of ``<X-Regscan-Timestamp>.<body>`` (the timestamp header's
decimal Unix seconds, a dot, then the exact body bytes), and refuses old timestamps, so
that a captured callback cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import requests

from core.views import job_view
from models import ScanJob
from models import callbacks as store
from models.db import transaction
from worker.runtime import Runtime
from worker.telemetry import callback_attempt

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Regscan-Signature"
TIMESTAMP_HEADER = "X-Regscan-Timestamp"
ERROR_CHARS = 500


class RetryableDelivery(Exception):
    """The receiver is there but could not take the callback now (5xx or 429)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def encode(view: dict[str, Any]) -> bytes:
    return json.dumps(view, separators=(",", ":"), sort_keys=True).encode()


def deliver(rt: Runtime, job_id: int, attempt: int) -> None:
    """POST the job's final state once; every attempt is recorded. Raises
    :class:`RetryableDelivery` or a connection error when trying again may help."""
    with rt.sessions() as session:
        job = session.get(ScanJob, job_id)
        if job is None or not job.callback_url or not job.status.is_final:
            return
        if store.delivered(session, job_id):
            return  # a duplicate message: the receiver already has it
        url, body = job.callback_url, encode(job_view(job))
    secret = rt.settings.callback_secret
    if secret is None:
        _record(rt, job_id, attempt, url, None, "REGSCAN_CALLBACK_SECRET is not set on the worker")
        return
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "regscan-callback",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret.get_secret_value().encode(), timestamp, body),
    }
    try:
        r = requests.post(
            url,
            data=body,
            headers=headers,
            timeout=rt.settings.callback_timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        _record(rt, job_id, attempt, url, None, str(exc)[:ERROR_CHARS])
        raise
    error = "" if 200 <= r.status_code < 300 else f"HTTP {r.status_code}: {r.text[:200]}"
    _record(rt, job_id, attempt, url, r.status_code, error)
    if r.status_code >= 500 or r.status_code == 429:
        raise RetryableDelivery(f"job={job_id} callback answered {r.status_code}")


def _record(
    rt: Runtime, job_id: int, attempt: int, url: str, status: int | None, error: str
) -> None:
    log.info("job=%s callback attempt=%s status=%s %s", job_id, attempt, status, error)
    callback_attempt(status)
    with transaction(rt.sessions) as session:
        store.record(session, job_id, attempt, url, status, error)
