"""``Idempotency-Key``: the same key from the same team within 24 hours gets the same
answer and never a second job.

The first request reserves the key (the database's unique constraint decides between
concurrent ones), does the work, and stores its answer. Later requests with the key
replay that answer; while the first one is still at work they wait for it. A request
that fails frees its key, so the caller may retry with the same one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import Response
from sqlalchemy.exc import IntegrityError

from api.deps import AppState
from api.errors import ApiError
from models import idempotency as store
from models.base import utcnow
from models.db import transaction

MAX_KEY_CHARS = 255
# How long a repeated request waits for the first one with its key to finish.
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1
# A key still held this long after it was reserved belongs to a request that died.
ABANDONED = timedelta(seconds=120)


def fingerprint(route: str, payload: Any, **params: Any) -> str:
    """A hash of what a request asks for: same route, same JSON, same parameters."""
    canonical = json.dumps([route, payload, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def once(
    state: AppState,
    response: Response,
    team: str,
    key: str | None,
    request_hash: str,
    produce: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """``produce()``, or the answer it gave to an earlier request with this key."""
    if key is None:
        return produce()
    if not key.strip() or len(key) > MAX_KEY_CHARS:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters")
    earlier = _claim_or_wait(state, team, key, request_hash)
    if earlier is not None:
        response.headers["Idempotent-Replayed"] = "true"
        return earlier
    try:
        answer = produce()
    except BaseException:
        with transaction(state.sessions) as session:
            store.release(session, team, key)
        raise
    with transaction(state.sessions) as session:
        store.complete(session, team, key, answer)
    return answer


def _claim_or_wait(
    state: AppState, team: str, key: str, request_hash: str
) -> dict[str, Any] | None:
    """None once this request holds the key; else the answer of the one that did."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            with transaction(state.sessions) as session:
                store.drop_expired(session, team, key, utcnow() - store.WINDOW)
                row = store.find(session, team, key)
                if row is None:
                    store.reserve(session, team, key, request_hash)
                    return None
                held_hash, answer, reserved_at = row.request_hash, row.response, row.created_at
        except IntegrityError:
            continue  # another request reserved it first: read its row
        if held_hash != request_hash:
            raise ApiError(
                422,
                f"Idempotency-Key {key!r} was already used within 24 hours for a different "
                "request; send the same body again to get its answer, or use a new key",
            )
        if answer != store.PENDING:
            return answer
        if reserved_at < utcnow() - ABANDONED:
            # The request holding it died (its API process was killed): take it over.
            with transaction(state.sessions) as session:
                store.release(session, team, key)
            continue
        if time.monotonic() > deadline:
            raise ApiError(
                409,
                f"a request with Idempotency-Key {key!r} is still being served; retry shortly",
            )
        time.sleep(POLL_SECONDS)
