"""Fixtures every test module shares, each defined here once.

- services: ``redis_server`` (one per session); ``registry`` (one per test module) with
  its ``pusher``; per test, a fault ``proxy`` and a ``slow_registry`` in front of it and a
  registry ``client``.
- databases: ``database_url``, once per backend (SQLite always, PostgreSQL when one
  answers), the schema built by running the migrations.
- the process stack: ``stack``, ``api`` and ``db``: the real API and real workers as
  processes, over the real Redis and the database under test; the API serves HTTPS
  too, with ``api_certificate``. Each backend gets its own database, Redis database
  number and set of processes; tests keep out of each other's way by using repository
  names of their own (``name``).

The fast lane is ``pytest -m "not e2e and not slow"``. Tests that use the process stack
are marked ``e2e`` here, and tests that use a fixture built by a compiler or a package
manager ``slow``; a test that takes seconds of its own is marked ``slow`` where it is
defined.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.secrets import generate_key
from models.db import make_engine, make_sessionmaker
from regscan.db import upgrade
from scanner.registry.client import RegistryClient
from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RedisServer, RegistryServer, fresh_postgres_database, postgres_url
from testbed.stack import (
    ADMIN,
    CALLBACK_SECRET,
    FAST_TIMINGS,
    FINAL,
    METRICS_TOKEN,
    WEBHOOK_SECRET,
    Api,
    Stack,
    wait_for,
)
from testbed.tls import ServerCertificate, TestCA

# Fixtures that run the API and workers as processes (``keyed`` is test_credentials'
# stack with a secret key): a test using one, directly or through another, is ``e2e``.
PROCESS_STACK_FIXTURES = frozenset({"stack", "api", "db", "keyed", "outage"})
# Fixtures built by a compiler or installed by a package manager: the Go builds take
# about 15 s on a cold build cache, npm needs its registry. A test using one is ``slow``.
BUILT_FIXTURES = frozenset({"go_binaries", "go_semver", "node_semver"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if PROCESS_STACK_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.e2e)
        if BUILT_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.slow)
    # A process stack takes seconds to start: behaviour that does not depend on the
    # database (a client of the API, the shape of log lines) runs on SQLite only.
    other_backend = [item for item in items if _sqlite_only(item) and _on_postgresql(item)]
    if other_backend:
        config.hook.pytest_deselected(items=other_backend)
        items[:] = [item for item in items if item not in other_backend]


def _sqlite_only(item: pytest.Item) -> bool:
    return item.get_closest_marker("sqlite_only") is not None


def _on_postgresql(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return "postgresql" in (params.get("database_url"), params.get("own_database"))


# -- services ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    """A registry of the test module's own, shared by its tests.

    Not one per session: some modules change stored blobs behind the registry's back,
    and storage is shared by digest, so a later push of the same bytes elsewhere would
    be served the tampered copy; others list the whole catalog or use fixed repository
    names.
    """
    with RegistryServer() as server:
        yield server


@pytest.fixture(scope="module")
def pusher(registry: RegistryServer) -> Pusher:
    return Pusher(registry.url)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the registry, new for each test: it counts requests."""
    with FaultProxy("127.0.0.1", registry.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def slow_registry(registry: RegistryServer) -> Iterator[FaultProxy]:
    """The registry behind a proxy of its own, for a test to delay requests with."""
    with FaultProxy.for_url(registry.url) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def client(request: pytest.FixtureRequest, registry: RegistryServer) -> Iterator[RegistryClient]:
    """A registry client with short pauses between retries.

    It talks to the registry itself, unless the module or test is marked
    ``@pytest.mark.registry_client(via_proxy=True, ...)``: then it goes through the test's
    ``proxy``, which sees every request it makes. The marker's other keywords are
    options of :class:`RegistryClient` (``retries=1``).
    """
    marker = request.node.get_closest_marker("registry_client")
    options = {"retries": 2, "backoff": 0.01, "read_timeout": 5.0}
    options.update(marker.kwargs if marker else {})
    via_proxy = options.pop("via_proxy", False)
    url = request.getfixturevalue("proxy").url if via_proxy else registry.url
    with RegistryClient(url, **options) as registry_client:
        yield registry_client


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


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def own_database(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    """A database of the test module's own, per backend, its schema built by the
    migrations: for a stack of the module's own, which its tests may break."""
    urls = (
        _sqlite_url(tmp_path_factory.mktemp("own"))
        if request.param == "sqlite"
        else _postgres_database()
    )
    for url in urls:
        upgrade(url)
        yield url


def stack_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a process stack on these services, with the test timings."""
    return {
        **os.environ,
        **FAST_TIMINGS,
        "REGSCAN_DATABASE_URL": database_url,
        "REGSCAN_REDIS_URL": redis_url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
        **extra,
    }


# -- the running service ---------------------------------------------------------------

_redis_db = iter(range(1, 16))


@pytest.fixture(scope="session")
def api_ca(tmp_path_factory) -> TestCA:
    """The CA of this run that signs the API's certificates."""
    return TestCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def api_certificate(api_ca: TestCA) -> ServerCertificate:
    """The API's TLS certificate (``ca_file`` trusts it)."""
    return api_ca.issue("regscan-api")


@pytest.fixture(scope="session")
def stack(
    database_url: str,
    redis_server: RedisServer,
    api_certificate: ServerCertificate,
    tmp_path_factory,
) -> Iterator[Stack]:
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
        "REGSCAN_METRICS_TOKEN": METRICS_TOKEN,
        # Credentials can be stored (encrypted under this key).
        "REGSCAN_SECRET_KEY": generate_key(),
    }
    logs = tmp_path_factory.mktemp("logs")
    # The API serves HTTPS too, as the reference console does: the SDK insists on it.
    s = Stack(env, logs, tls=api_certificate)
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
