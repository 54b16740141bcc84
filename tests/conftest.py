"""Fixtures for end-to-end tests: the real API and real workers as processes, over a real
Redis, a real registry, and the database under test (SQLite always, PostgreSQL too).

The schema is built by running the migrations. Each backend gets its own database,
Redis database number and set of processes; tests keep out of each other's way by
using repository names of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.db import make_engine, make_sessionmaker
from regscan.db import upgrade
from testbed.images import Pusher
from testbed.services import RedisServer, RegistryServer, fresh_postgres_database, postgres_url
from testbed.stack import (
    ADMIN,
    CALLBACK_SECRET,
    FAST_TIMINGS,
    FINAL,
    WEBHOOK_SECRET,
    Api,
    Stack,
    wait_for,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryServer]:
    with RegistryServer() as server:
        yield server


@pytest.fixture(scope="session")
def pusher(registry: RegistryServer) -> Pusher:
    return Pusher(registry.url)


@pytest.fixture
def name() -> str:
    """A repository prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}"


# -- databases ---------------------------------------------------------------------


def _sqlite_url(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'regscan.db'}"


def _postgres_database() -> Iterator[str]:
    server = postgres_url()
    if server is None:
        pytest.skip("no PostgreSQL: run the suite through scripts/test.sh")
    with fresh_postgres_database(server, "regscan_test") as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield from _sqlite_url(tmp_path_factory.mktemp("sqlite"))
    else:
        yield from _postgres_database()


# -- the running service ---------------------------------------------------------------

_redis_db = iter(range(1, 16))


@pytest.fixture(scope="session")
def stack(database_url: str, redis_server: RedisServer, tmp_path_factory) -> Iterator[Stack]:
    upgrade(database_url)
    redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_redis_db)}"
    env = {
        **os.environ,
        **FAST_TIMINGS,
        "REGSCAN_DATABASE_URL": database_url,
        "REGSCAN_REDIS_URL": redis_url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
        "REGSCAN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REGSCAN_CALLBACK_SECRET": CALLBACK_SECRET,
    }
    logs = tmp_path_factory.mktemp("logs")
    s = Stack(env, logs)
    try:
        s.start_api()
        s.start_worker("regular", "regular,images")
        s.start_worker("ondemand", "ondemand")
        s.start_worker("callbacks", "callbacks")
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(stack: Stack) -> Iterator[Api]:
    """The admin's client; no regular scan is left running when the test ends."""
    yield stack.api
    stack.api.post("/api/v1/registry/stop")

    def quiet() -> bool:
        scans = stack.api.get("/api/v1/registry/scans", params={"limit": 250}).json()
        return all(s["status"] in FINAL for s in scans)

    wait_for(quiet, 60, "every scan to end before the next test")


@pytest.fixture
def db(stack: Stack):
    """Sessions on the database under test, for asserting what was stored."""
    engine = make_engine(stack.env["REGSCAN_DATABASE_URL"])
    yield make_sessionmaker(engine)
    engine.dispose()
