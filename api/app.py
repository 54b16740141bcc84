"""The HTTP API: the reference registry scan routes under ``/api/v<VERSION>``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy.orm import Session, sessionmaker

from api import dashboard, errors, health, metrics, openapi
from api.auth import Authenticator, client_of, ensure_admin
from api.deps import AppState, RawBody, State, User, Viewer
from api.errors import ApiError
from api.guards import RequestGuards
from api.routes import (
    bulk,
    callbacks,
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
from models.db import make_engine, make_sessionmaker
from scheduler.wiring import wire

# "1", or a dotted release such as "22.06" or "34.04": any of them serves the same API.
_VERSION = re.compile(r"\d+(?:\.\d+)?")


async def check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise ApiError(
            404,
            f"unknown API version {version!r}: use /api/v1/... or a dotted version "
            "such as /api/v34.04/...",
        )


def create_app(
    config: Settings, *, schema_head: str | None = None, prepared: bool = False
) -> FastAPI:
    """The API, the dashboard and the observability endpoints. ``schema_head`` is the
    newest migration: ``/readyz`` fails while the database is behind it. ``prepared``:
    :func:`prepare` ran already (the process that started this one did)."""
    wiring = wire(config)
    sessions = wiring.sessions
    if not prepared:
        _prepare(config, sessions)

    # No /docs or /redoc: they load their scripts from a public CDN. The OpenAPI
    # document itself is served to logged-in users, at /openapi.json.
    app = FastAPI(title="regscan", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestGuards, max_body_bytes=config.max_body_bytes)
    app.state.regscan = AppState(
        settings=config,
        sessions=sessions,
        redis=wiring.redis,
        admission=wiring.admission,
        auth=Authenticator(config, sessions, wiring.redis),
    )
    errors.install(app)
    openapi.install(app)
    versioned = APIRouter(prefix="/api/v{version}", dependencies=[Depends(check_version)])
    versioned.include_router(registry.router)
    versioned.include_router(bulk.router)
    versioned.include_router(callbacks.router)
    versioned.include_router(tokens.router)
    versioned.include_router(registry_settings.router)
    versioned.include_router(scan_settings.router)
    versioned.include_router(credentials.router)
    versioned.include_router(exports.router)
    versioned.include_router(campaigns.router)
    versioned.include_router(vulndb.router)
    versioned.include_router(webhooks.router)
    versioned.add_api_route(
        "/authenticate", authenticate, methods=["POST"], openapi_extra=openapi.body(Credentials)
    )
    versioned.add_api_route("/logout", logout, methods=["POST"])
    versioned.add_api_route("/_ping", ping, methods=["GET"])
    app.include_router(versioned)
    app.add_api_route("/openapi.json", openapi_document, methods=["GET"], include_in_schema=False)
    # Harbor's pluggable scanner API, at the path Harbor is given: https://REGSCAN/harbor
    app.include_router(harbor.router)
    health.install(app, health.Readiness(sessions, config.redis_url, schema_head))
    metrics.install(app)
    dashboard.install(app)
    return app


def prepare(config: Settings) -> None:
    """What :func:`create_app` checks and sets up in the database, done once before
    several API processes start, so that they do not race to create the first admin."""
    engine = make_engine(config.database_url)
    try:
        _prepare(config, make_sessionmaker(engine))
    finally:
        engine.dispose()


def _prepare(config: Settings, sessions: sessionmaker[Session]) -> None:
    check_key(config)
    password = config.admin_password.get_secret_value() if config.admin_password else None
    ensure_admin(sessions, config.admin_user, password)


def authenticate(request: Request, state: State, body: RawBody) -> dict[str, Any]:
    """``{"username", "password"}`` -> ``{"token"}``, a bearer token for later requests."""
    creds = Credentials.model_validate(parse_json_body(body) or {})
    return {"token": state.auth.issue_token(creds.username, creds.password, client_of(request))}


def logout(request: Request, _user: Viewer, state: State) -> dict[str, Any]:
    """Revoke the bearer token the request carries (from ``POST /authenticate``)."""
    if not state.auth.revoke_token(request):
        raise ApiError(
            400,
            "nothing to log out: send the bearer token from POST /api/v1/authenticate "
            "(API tokens are revoked with DELETE /api/v1/tokens/{id})",
        )
    return {"loggedOut": True}


def ping() -> str:
    return "OK"


def openapi_document(request: Request, _user: User) -> dict[str, Any]:
    """The OpenAPI document of this API, for logged-in users."""
    return request.app.openapi()
