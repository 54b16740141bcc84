"""Registry push events become on-demand scans, each event at most once."""

from __future__ import annotations

import dataclasses
import logging

from core.reference import ImageRef
from core.requester import Requester
from models import webhooks
from models.db import transaction
from scheduler.admission import Admission
from scheduler.errors import OutOfScope

log = logging.getLogger(__name__)

SCANNED = "scanned"
IGNORED = "ignored"
OUT_OF_SCOPE = "out-of-scope"
DUPLICATE = "duplicate"


@dataclasses.dataclass(frozen=True)
class Push:
    """One pushed tag, as a registry reported it."""

    event_id: str
    source: str  # distribution, harbor
    ref: ImageRef


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    outcome: str  # scanned, out-of-scope, duplicate
    job_id: int | None = None


WEBHOOK = "webhook"  # who a push event's scan is asked by, and from where


def accept_push(admission: Admission, push: Push) -> PushOutcome:
    """Claim the event, then ask for an on-demand scan of the pushed image.

    An image outside every specification is recorded and never contacted. When
    asking fails for another reason the claim is dropped, so a redelivery retries.
    """
    with transaction(admission.sessions) as session:
        if not webhooks.claim_event(session, push.event_id, push.source):
            return PushOutcome(DUPLICATE)
    try:
        # The team of push events: held to its limit and its fair share like any other.
        requester = Requester(WEBHOOK, admission.settings.webhook_team, source=WEBHOOK)
        job = admission.request_on_demand(push.ref, requester)
    except OutOfScope as exc:
        _settle(admission, push.event_id, OUT_OF_SCOPE, None)
        log.info("event=%s out of scope: %s", push.event_id, exc)
        return PushOutcome(OUT_OF_SCOPE)
    except Exception:
        with transaction(admission.sessions) as session:
            webhooks.release_event(session, push.event_id)
        raise
    _settle(admission, push.event_id, SCANNED, job.id)
    return PushOutcome(SCANNED, job.id)


def _settle(admission: Admission, event_id: str, outcome: str, job_id: int | None) -> None:
    with transaction(admission.sessions) as session:
        webhooks.settle_event(session, event_id, outcome, job_id)
