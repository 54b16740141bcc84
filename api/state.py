"""What the API process holds once, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Authenticator, Principal
from api.errors import ApiError
from core.settings import Settings
from scheduler.service import Scheduler


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    scheduler: Scheduler
    auth: Authenticator


def app_state(request: Request) -> AppState:
    return request.app.state.regscan


State = Annotated[AppState, Depends(app_state)]


# What each role is refused, in words for the 403 message.
_REFUSALS = {
    "viewer": "read scans, results and settings",
    "operator": "start or stop scans",
    "admin": "manage settings, credentials or API tokens",
}
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def authorize(principal: Principal, needed: str) -> Principal:
    """``principal`` if its role includes ``needed``; 403 naming what it may not do."""
    if not principal.may(needed):
        raise ApiError(403, f"role {principal.role} may not {_REFUSALS[needed]}")
    return principal


def current_user(request: Request, state: State) -> str:
    """The caller's name. Reading needs any role; any other method needs admin, so an
    endpoint that says nothing more is closed to operators and viewers by default."""
    principal = state.auth.principal_of(request)
    return authorize(principal, "viewer" if request.method in _SAFE_METHODS else "admin").name


def _needs(role: str):
    def dependency(request: Request, state: State) -> Principal:
        return authorize(state.auth.principal_of(request), role)

    return dependency


User = Annotated[str, Depends(current_user)]
Viewer = Annotated[Principal, Depends(_needs("viewer"))]
Operator = Annotated[Principal, Depends(_needs("operator"))]
Admin = Annotated[Principal, Depends(_needs("admin"))]


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
