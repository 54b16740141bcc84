"""The HTTP API: the reference registry scan routes under ``/api/v<VERSION>``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from api import errors
from api.auth import Authenticator, ensure_admin
from api.deps import AppState, RawBody, State
from api.errors import ApiError
from api.routes import (
    bulk,
    campaigns,
    credentials,
    exports,
    harbor,
    registry,
    registry_settings,
    scan_settings,
    tokens,
    vulndb,
    webhooks,
)
from api.schemas import Credentials, parse_json_body
from core.secrets import check_key
from core.settings import Settings
from scheduler.wiring import wire

# "1", or a dotted release such as "22.06" or "34.04": any of them serves the same API.
_VERSION = re.compile(r"\d+(?:\.\d+)?")


def check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise ApiError(
            404,
            f"unknown API version {version!r}: use /api/v1/... or a dotted version "
            "such as /api/v34.04/...",
        )


def create_app(config: Settings) -> FastAPI:
    wiring = wire(config)
    sessions = wiring.sessions
    check_key(config)
    password = config.admin_password.get_secret_value() if config.admin_password else None
    ensure_admin(sessions, config.admin_user, password)

    app = FastAPI(title="regscan", version="0.1.0")
    app.state.regscan = AppState(
        settings=config,
        sessions=sessions,
        redis=wiring.redis,
        admission=wiring.admission,
        auth=Authenticator(sessions, config.token_ttl_seconds),
    )
    errors.install(app)
    versioned = APIRouter(prefix="/api/v{version}", dependencies=[Depends(check_version)])
    versioned.include_router(registry.router)
    versioned.include_router(bulk.router)
    versioned.include_router(tokens.router)
    versioned.include_router(registry_settings.router)
    versioned.include_router(scan_settings.router)
    versioned.include_router(credentials.router)
    versioned.include_router(exports.router)
    versioned.include_router(campaigns.router)
    versioned.include_router(vulndb.router)
    versioned.include_router(webhooks.router)
    versioned.add_api_route("/authenticate", authenticate, methods=["POST"])
    versioned.add_api_route("/_ping", ping, methods=["GET"])
    app.include_router(versioned)
    # Harbor's pluggable scanner API, at the path Harbor is given: https://REGSCAN/harbor
    app.include_router(harbor.router)
    return app


def authenticate(state: State, body: RawBody) -> dict[str, Any]:
    """``{"username", "password"}`` -> ``{"token"}``, a bearer token for later requests."""
    creds = Credentials.model_validate(parse_json_body(body) or {})
    return {"token": state.auth.issue_token(creds.username, creds.password)}


def ping() -> str:
    return "OK"
