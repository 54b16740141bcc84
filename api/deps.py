"""What every route depends on: the process's state, who the caller is and what their
role allows, the raw body, and the pieces several routes share (the result filter,
the idempotency key, the callback check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Authenticator, Principal
from api.errors import ApiError
from core.callbacks import Allowed, RefusedDestination, destination
from core.reference import parse_registry, validate_repository, validate_tag
from core.requester import Requester
from core.settings import Settings
from models.result_queries import ResultFilter
from scheduler.admission import Admission


@dataclass
class AppState:
    """What the API process holds once, reachable from any request."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    admission: Admission
    auth: Authenticator


def app_state(request: Request) -> AppState:
    return request.app.state.regscan


async def _state(request: Request) -> AppState:
    # async: FastAPI runs a plain function on the thread pool, a hop every request pays.
    return app_state(request)


State = Annotated[AppState, Depends(_state)]


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


def requester(principal: Principal, callback_url: str = "") -> Requester:
    """The caller as the job will name it: who, for which team, called back where."""
    return Requester(principal.name, principal.team, "api", callback_url)


# -- shared by several routes ------------------------------------------------------------

# Row ids and offsets are 32-bit integers in the database: anything larger matches
# nothing, and is refused before it reaches a query.
MAX_ID = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="rows to skip")]

IdempotencyKey = Header(None, alias="Idempotency-Key", description="Same key, same answer")


def check_callbacks_enabled(state: AppState, callback_url: str) -> None:
    """A callback must be signed, and go to a public address (or one the operator allowed):
    refuse it now rather than when the scan ends."""
    if not callback_url:
        return
    if state.settings.callback_secret is None:
        raise ApiError(
            400,
            "callbackUrl cannot be used: this server has no REGSCAN_CALLBACK_SECRET to sign "
            "callbacks with; ask its operator to set one",
        )
    try:
        destination(callback_url, Allowed.parse(state.settings.callback_allow))
    except RefusedDestination as exc:
        raise ApiError(400, str(exc)) from None


def result_filter(
    name: str | None = Query(None, description="REGISTRY/REPO:TAG"),
    registry: str | None = None,
    repository: str | None = None,
    id: str | None = Query(None, description="image id (config digest) or manifest digest"),
    cve: str | None = Query(None, description="only images affected by this vulnerability"),
    package: str | None = Query(None, description="only images holding this package"),
    packageVersion: str | None = Query(None, description="with package: this version only"),
    search: str | None = Query(
        None, max_length=255, description="a substring of the registry, repository or tag"
    ),
) -> ResultFilter:
    """The filters shared by the result list and its exports."""
    if packageVersion is not None and package is None:
        raise ApiError(400, "packageVersion needs package: add ?package=NAME")
    try:
        host = parse_registry(registry).host if registry else None
        tag = None
        if name:
            host, repository, tag = _split_name(name)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return ResultFilter(
        registry=host,
        repository=repository,
        tag=tag,
        image_id=id,
        cve=cve,
        package=package,
        package_version=packageVersion,
        search=search or None,
    )


Filter = Annotated[ResultFilter, Depends(result_filter)]


def _split_name(name: str) -> tuple[str, str, str | None]:
    """``REGISTRY/REPO[:TAG]`` into its parts; no tag means every tag of the repository."""
    registry, slash, rest = name.partition("/")
    if not slash or not rest:
        raise ValueError(f"name {name!r} is not a full image name: use REGISTRY/REPO:TAG")
    repo, tag = rest, None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = rest.rsplit(":", 1)
        validate_tag(tag)
    return parse_registry(registry).host, validate_repository(repo), tag
