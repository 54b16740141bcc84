"""Forgetting what is no longer needed: expired idempotency keys and old push events.

Both tables gain a row per request; without this they grow for as long as the service
runs. One worker per hour does it (Redis key ``regscan:housekeeping``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from models import idempotency, webhooks
from models.base import utcnow
from models.db import transaction
from scheduler import keys
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Registries redeliver an unacknowledged push event for hours at the most; a week of
# event ids still catches any replay of one.
WEBHOOK_EVENT_RETENTION = timedelta(days=7)


@dataclass
class Pruned:
    idempotency_keys: int = 0
    webhook_events: int = 0


def prune(sessions: sessionmaker[Session], now: datetime | None = None) -> Pruned:
    """Delete idempotency keys past their window and push events past their retention."""
    now = now or utcnow()
    with transaction(sessions) as session:
        return Pruned(
            idempotency_keys=idempotency.drop_all_expired(session, now - idempotency.WINDOW),
            webhook_events=webhooks.forget_events(session, now - WEBHOOK_EVENT_RETENTION),
        )


def periodic(rt: Runtime, node: str) -> None:
    """Prune, if no worker has this hour."""
    if not rt.redis.set(keys.HOUSEKEEPING, node, nx=True, ex=keys.HOUSEKEEPING_SECONDS):
        return
    pruned = prune(rt.sessions)
    if pruned.idempotency_keys or pruned.webhook_events:
        log.info(
            "forgot %s expired idempotency keys and %s push events",
            pruned.idempotency_keys,
            pruned.webhook_events,
        )
