"""``GET /callbacks/key``: the key a team's completion callbacks are signed with.

Each team has its own (derived from ``REGSCAN_CALLBACK_SECRET``), so a receiver trusts
only callbacks made for its team. Operators read their own team's key; admins any.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from api.deps import Operator, State
from api.errors import ApiError
from core.callbacks import team_key

router = APIRouter()


@router.get("/callbacks/key")
def callback_key(
    caller: Operator,
    state: State,
    team: str | None = Query(None, max_length=128, description="another team's (admins)"),
) -> dict[str, Any]:
    secret = state.settings.callback_secret
    if secret is None:
        raise ApiError(404, "callbacks are off: this server has no REGSCAN_CALLBACK_SECRET")
    if team is not None and team != caller.team and not caller.may("admin"):
        raise ApiError(403, f"role {caller.role} may not read another team's callback key")
    whose = caller.team if team is None else team
    return {
        "team": whose,
        "key": team_key(secret.get_secret_value(), whose).decode(),
        "signature": "X-Regscan-Signature: sha256=HMAC-SHA256(key, timestamp + '.' + body)",
    }
