"""``/tokens``: API tokens for other teams' services, issued and revoked by an admin.

A token is shown once, in the answer that creates it; afterwards only its first
characters are, so that a person can tell which one a service holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import Field, StrictStr

from api.auth import new_api_token
from api.deps import MAX_ID, Admin, RawBody, State
from api.errors import ApiError
from api.openapi import body
from api.schemas import Strict, parse_json_body
from core.views import ts
from models import ApiToken
from models import api_tokens as store
from models.db import transaction

router = APIRouter()

PREFIX_CHARS = 10


class TokenRequest(Strict):
    name: StrictStr = Field(min_length=1, max_length=128)
    team: StrictStr = Field(min_length=1, max_length=128)
    role: Literal["admin", "operator", "viewer"]


def token_view(row: ApiToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "team": row.team,
        "role": row.role,
        "prefix": row.prefix,
        "createdBy": row.created_by,
        "createdAt": ts(row.created_at),
        "revokedAt": ts(row.revoked_at),
        "lastUsedAt": ts(row.last_used_at),
    }


@router.post("/tokens", openapi_extra=body(TokenRequest))
def create_token(caller: Admin, state: State, body: RawBody) -> dict[str, Any]:
    """Issue a token; the answer is the only place it is ever shown."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(400, 'body must be {"name": ..., "team": ..., "role": "operator"}')
    req = TokenRequest.model_validate(payload)
    token, token_hash = new_api_token()
    with transaction(state.sessions) as session:
        row = store.add_token(
            session,
            name=req.name,
            team=req.team,
            role=req.role,
            token_hash=token_hash,
            prefix=token[:PREFIX_CHARS],
            by=caller.name,
        )
        view = token_view(row)
    return {**view, "token": token}


@router.get("/tokens")
def list_tokens(_caller: Admin, state: State) -> list[dict[str, Any]]:
    """Every token, revoked ones included, without secrets."""
    with state.sessions() as session:
        return [token_view(r) for r in store.list_tokens(session)]


@router.delete("/tokens/{token_id}")
def revoke_token(
    _caller: Admin, state: State, token_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> dict[str, Any]:
    """Revoke a token: requests carrying it are refused from now on."""
    with transaction(state.sessions) as session:
        row = store.revoke(session, token_id)
        if row is None:
            raise ApiError(404, f"no API token {token_id}: GET /api/v1/tokens lists them")
        return token_view(row)
