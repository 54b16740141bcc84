"""What the API process holds once, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Authenticator
from regscan.settings import Settings
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


def current_user(request: Request, state: State) -> str:
    return state.auth.user_of(request)


User = Annotated[str, Depends(current_user)]


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
