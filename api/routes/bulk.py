"""``POST /registry/scan/bulk``: many on-demand scans in one request, one job per image,
for other teams' services."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api import idempotency
from api.deps import (
    IdempotencyKey,
    Operator,
    RawBody,
    State,
    check_callbacks_enabled,
    requester,
)
from api.errors import ApiError
from api.openapi import body
from api.schemas import BulkScanRequest, parse_json_body
from core.reference import ImageRef
from models import ScanJob

router = APIRouter()


@router.post("/registry/scan/bulk", openapi_extra=body(BulkScanRequest))
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
        answers = state.admission.request_on_demand_many(
            request.images, requester(caller, request.callbackUrl)
        )
        pairs = enumerate(zip(request.images, answers, strict=True))
        entries = [_bulk_entry(i, tag, answer) for i, (tag, answer) in pairs]
        queued = sum(1 for e in entries if "id" in e)
        return {"queued": queued, "refused": len(entries) - queued, "images": entries}

    key_hash = idempotency.fingerprint("bulk", payload)
    return idempotency.once(state, response, caller.team, idempotency_key, key_hash, enqueue)


def _bulk_entry(index: int, ref: ImageRef, answer: ScanJob | Exception) -> dict[str, Any]:
    image = ref.as_target()
    if isinstance(answer, ScanJob):
        return {"index": index, "image": image, "id": answer.id, "status": answer.status.value}
    return {"index": index, "image": image, "err": str(answer)}
