"""Every error leaves the API as JSON ``{"err": "..."}`` with a message saying what to fix.

Under the Harbor adapter's prefix the same message also comes in the shape the pluggable
scanner spec gives errors, ``{"error": {"message": "..."}}``, with its media type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError as DBAPIDataError
from sqlalchemy.exc import InterfaceError as DBAPIInterfaceError
from sqlalchemy.exc import OperationalError as DBAPIOperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.guards import BodyTooLarge
from scheduler.errors import (
    Busy,
    NoSpecifications,
    NothingSelected,
    OutOfScope,
    ScanConflict,
    TeamOverLimit,
    Unavailable,
)

log = logging.getLogger(__name__)
_RETRY = {"Retry-After": "5"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


HARBOR_PREFIX = "/harbor/"
HARBOR_ERROR_TYPE = "application/vnd.scanner.adapter.error+json; version=1.0"


def err(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    if request is not None and request.url.path.startswith(HARBOR_PREFIX):
        body = {"err": message, "error": {"message": message}}
        return JSONResponse(body, status, headers, media_type=HARBOR_ERROR_TYPE)
    return JSONResponse({"err": message}, status_code=status, headers=headers)


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line per problem: where it is, and what is wrong with it."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field; remove it (see the API reference for the accepted fields)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return err(exc.status, exc.message, exc.headers, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint: check the path, e.g. /api/v1/registry"
        if exc.status_code == 405:
            message = "method not allowed on this endpoint"
        return err(exc.status_code, message, getattr(exc, "headers", None), request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return err(400, describe_validation(list(exc.errors())), request=request)

    @app.exception_handler(ValidationError)
    async def _invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        return err(400, describe_validation(list(exc.errors())), request=request)

    @app.exception_handler(ScanConflict)
    async def _conflict(_request: Request, exc: ScanConflict) -> JSONResponse:
        return err(409, str(exc))

    @app.exception_handler(OutOfScope)
    async def _out_of_scope(_request: Request, exc: OutOfScope) -> JSONResponse:
        return err(403, str(exc))

    @app.exception_handler(NoSpecifications)
    @app.exception_handler(NothingSelected)
    async def _nothing(_request: Request, exc: Exception) -> JSONResponse:
        return err(400, str(exc))

    @app.exception_handler(TeamOverLimit)
    async def _over_limit(_request: Request, exc: TeamOverLimit) -> JSONResponse:
        return err(429, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return err(413, str(exc))

    @app.exception_handler(Busy)
    async def _busy(_request: Request, exc: Busy) -> JSONResponse:
        return err(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(Unavailable)
    async def _unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return err(503, str(exc), {"Retry-After": str(exc.retry_after)})

    # The services behind the API going away is not the caller's fault, and not a bug:
    # the request did nothing (its transaction rolled back), and asking again will work
    # once they are back.
    # Any Redis error: away, timing out, or refusing writes (MISCONF on a full disk,
    # OOM, READONLY on a replica).
    @app.exception_handler(RedisError)
    async def _redis_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable: %s", exc.__class__.__name__)
        return err(503, "the queue (Redis) is not answering; ask again shortly", _RETRY)

    # A value the database refuses (too long for its column, out of its range): the
    # request's own fault. The bounds of the request models should catch it first.
    @app.exception_handler(DBAPIDataError)
    async def _refused_value(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database refused a value: %s", exc.__class__.__name__)
        return err(400, "a value is too long or out of range for where it is stored")

    @app.exception_handler(DBAPIOperationalError)
    @app.exception_handler(DBAPIInterfaceError)
    async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return err(503, "the database is not answering; ask again shortly", _RETRY)
