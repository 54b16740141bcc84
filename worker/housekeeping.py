"""Forgetting what is no longer needed: expired idempotency keys, old push events, and
the vulnerability data changes every image has been matched past.

These tables gain rows with every request or import; without this they grow for as long
as the service runs. One worker per hour does it (Redis key ``regscan:housekeeping``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from core import keys
from models import idempotency, vuln_records, webhooks
from models.base import utcnow
from models.db import transaction
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Registries redeliver an unacknowledged push event for hours at the most; a week of
# event ids still catches any replay of one.
WEBHOOK_EVENT_RETENTION = timedelta(days=7)


@dataclass
class Pruned:
    idempotency_keys: int = 0
    webhook_events: int = 0
    vuln_changes: int = 0


def prune(sessions: sessionmaker[Session], now: datetime | None = None) -> Pruned:
    """Delete idempotency keys past their window, push events past their retention and
    data changes no image needs any more."""
    now = now or utcnow()
    with transaction(sessions) as session:
        return Pruned(
            idempotency_keys=idempotency.drop_all_expired(session, now - idempotency.WINDOW),
            webhook_events=webhooks.forget_events(session, now - WEBHOOK_EVENT_RETENTION),
            vuln_changes=vuln_records.forget_changes(session),
        )


def periodic(rt: Runtime, node: str) -> None:
    """Prune, if no worker has this hour."""
    if not rt.redis.set(keys.HOUSEKEEPING, node, nx=True, ex=keys.HOUSEKEEPING_SECONDS):
        return
    pruned = prune(rt.sessions)
    if pruned.idempotency_keys or pruned.webhook_events or pruned.vuln_changes:
        log.info(
            "forgot %s expired idempotency keys, %s push events and %s data changes",
            pruned.idempotency_keys,
            pruned.webhook_events,
            pruned.vuln_changes,
        )
