"""The enqueue API other teams' services lean on: bulk on-demand scans, and the pieces
that ``POST /registry/scan`` shares with it (callbacks, delivery history)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Response
from sqlalchemy.orm import Session

from api import idempotency
from api.errors import ApiError
from api.schemas import BulkScanRequest, TagRef, parse_json_body
from api.state import AppState, Operator, RawBody, State
from core.views import ts
from models import ScanJob
from models import callbacks as callback_store
from scheduler.service import ImageRef

router = APIRouter()

IdempotencyKey = Header(None, alias="Idempotency-Key", description="Same key, same answer")


def check_callbacks_enabled(state: AppState, callback_url: str) -> None:
    """A callback must be signed: refuse one while the server has no key to sign with."""
    if callback_url and state.settings.callback_secret is None:
        raise ApiError(
            400,
            "callbackUrl cannot be used: this server has no REGSCAN_CALLBACK_SECRET to sign "
            "callbacks with; ask its operator to set one",
        )


def callback_views(session: Session, job_id: int) -> list[dict[str, Any]]:
    """Every delivery attempt of a job's callback, oldest first."""
    return [
        {
            "attempt": d.attempt,
            "url": d.url,
            "statusCode": d.status_code,
            "error": d.error,
            "attemptedAt": ts(d.attempted_at),
        }
        for d in callback_store.deliveries(session, job_id)
    ]


def image_ref(t: TagRef) -> ImageRef:
    return ImageRef(registry=t.registry, repo=t.repo, tag=t.tag, digest=t.digest)


@router.post("/registry/scan/bulk")
def bulk_scan(
    caller: Operator,
    state: State,
    body: RawBody,
    response: Response,
    idempotency_key: str | None = IdempotencyKey,
) -> dict[str, Any]:
    """One on-demand job per image; images outside the configuration get the reason."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(400, 'body must be {"images": [{"registry", "repo", "tag"}, ...]}')
    request = BulkScanRequest.model_validate(payload)
    check_callbacks_enabled(state, request.callbackUrl)

    def enqueue() -> dict[str, Any]:
        answers = state.scheduler.request_on_demand_many(
            [image_ref(t) for t in request.images],
            caller.name,
            team=caller.team,
            callback_url=request.callbackUrl,
        )
        pairs = enumerate(zip(request.images, answers, strict=True))
        entries = [_bulk_entry(i, tag, answer) for i, (tag, answer) in pairs]
        queued = sum(1 for e in entries if "id" in e)
        return {"queued": queued, "refused": len(entries) - queued, "images": entries}

    key_hash = idempotency.fingerprint("bulk", payload)
    return idempotency.once(state, response, caller.team, idempotency_key, key_hash, enqueue)


def _bulk_entry(index: int, tag: TagRef, answer: ScanJob | Exception) -> dict[str, Any]:
    image = {"registry": tag.registry, "repo": tag.repo, "tag": tag.tag, "digest": tag.digest}
    if isinstance(answer, ScanJob):
        return {"index": index, "image": image, "id": answer.id, "status": answer.status.value}
    return {"index": index, "image": image, "err": str(answer)}
