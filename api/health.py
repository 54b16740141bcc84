"""``/healthz`` and ``/readyz``, for load balancers and container orchestrators.

``/healthz`` answers as long as the process serves requests. ``/readyz`` answers 200
only when the database answers and is at the newest migration and Redis answers;
otherwise 503 naming what is wrong. Neither needs credentials, so neither says more
than that: no addresses, no versions of anything.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# A probe must answer within the orchestrator's timeout even when Redis hangs.
PROBE_TIMEOUT_SECONDS = 2.0


class Readiness:
    """The checks of ``/readyz``: each returns "" when fine, else what is wrong."""

    def __init__(
        self, sessions: sessionmaker[Session], redis_url: str, schema_head: str | None
    ) -> None:
        self.sessions = sessions
        self.schema_head = schema_head
        self.redis = Redis.from_url(
            redis_url,
            socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
            socket_timeout=PROBE_TIMEOUT_SECONDS,
        )

    def problems(self) -> dict[str, str]:
        return {"database": self.database(), "redis": self.queue()}

    def database(self) -> str:
        try:
            with self.sessions() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return f"the database is not answering ({type(exc).__name__})"
        try:
            with self.sessions() as session:
                revision = session.execute(text("SELECT version_num FROM alembic_version"))
                current = revision.scalar()
        except SQLAlchemyError:
            return "the database has no schema: run `regscan db upgrade`"
        if self.schema_head is not None and current != self.schema_head:
            return (
                f"the database schema is at {current}, the newest is {self.schema_head}: "
                "run `regscan db upgrade`"
            )
        return ""

    def queue(self) -> str:
        try:
            self.redis.ping()
        except RedisError as exc:
            return f"Redis is not answering ({type(exc).__name__})"
        return ""


def install(app: FastAPI, readiness: Readiness) -> None:
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        problems = readiness.problems()
        checks = {name: problem or "ok" for name, problem in problems.items()}
        wrong = [problem for problem in problems.values() if problem]
        if wrong:
            log.info("not ready: %s", "; ".join(wrong))
            body: dict[str, Any] = {"err": "not ready: " + "; ".join(wrong), "checks": checks}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "checks": checks})
