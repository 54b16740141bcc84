"""Fixtures for end-to-end tests: the real API and real workers as processes, over a real
Redis, a real registry, and the database under test (SQLite always, PostgreSQL too).

The schema is built by running the migrations. Each backend gets its own database,
Redis database number and set of processes; tests keep out of each other's way by
using repository names of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from models.db import make_engine, make_sessionmaker
from regscan.db import upgrade
from testbed.images import Pusher
from testbed.services import (
    RedisServer,
    RegistryServer,
    free_port,
    fresh_postgres_database,
    postgres_url,
)

ADMIN = ("admin", "test-admin-password")
WEBHOOK_SECRET = "test-webhook-secret"
CALLBACK_SECRET = "test-callback-secret"
FINAL = {"completed", "stopped", "failed"}

# Short timings so that lease expiry, takeovers and stops happen within a test.
FAST_TIMINGS = {
    "REGSCAN_LOCK_TTL_SECONDS": "3",
    "REGSCAN_HEARTBEAT_SECONDS": "0.5",
    "REGSCAN_REAPER_SECONDS": "1",
    "REGSCAN_STOP_GRACE_SECONDS": "10",
    "REGSCAN_REGISTRY_RETRIES": "2",
    "REGSCAN_REGISTRY_BACKOFF": "0.1",
    "REGSCAN_REGISTRY_READ_TIMEOUT": "15",
    # Small enough for a test's decompression bomb to cross it.
    "REGSCAN_MAX_LAYER_EXPANDED_BYTES": str(64 << 20),
    # Small enough for a test to cross it with two bulk requests.
    "REGSCAN_TEAM_ONDEMAND_LIMIT": "120",
    # Schedules of a few seconds, and schedulers that look often.
    "REGSCAN_SCHEDULE_MIN_PERIOD_MS": "2000",
    "REGSCAN_SCHEDULE_POLL_SECONDS": "0.2",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


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


class Api:
    """A client of the running API, authenticated as the admin."""

    def __init__(self, base: str, auth: tuple[str, str] | None = ADMIN) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.auth = auth

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return self.http.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def set_specs(self, *specs: dict[str, Any]) -> None:
        r = self.put("/api/v1/settings/registry?scanLater=true", json={"specifications": specs})
        assert r.status_code == 200, r.text

    def scan(self, body: dict[str, Any] | None = None, **params: Any) -> requests.Response:
        return self.post("/api/v1/registry/scan", json=body, params=params)

    def started(self, body: dict[str, Any] | None = None, **params: Any) -> int:
        """Ask for a scan that must be admitted; its job id."""
        r = self.scan(body, **params)
        assert r.status_code == 200, f"scan refused: HTTP {r.status_code} {r.text}"
        return r.json()["id"]

    def job(self, job_id: int) -> dict[str, Any]:
        r = self.get(f"/api/v1/registry/scans/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, job_id: int, timeout: float = 60, statuses=FINAL) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_for(done, timeout, f"scan {job_id} to reach {sorted(statuses)}")

    def results(self, **params: Any) -> list[dict[str, Any]]:
        r = self.get("/api/v1/registry", params=params)
        assert r.status_code == 200, r.text
        return r.json()


class Stack:
    """The API and the workers of one backend, as separate processes."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.api = Api(f"http://127.0.0.1:{self.port}")

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "regscan.cli", *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        self._spawn("api", "api", "--port", str(self.port))
        wait_for(self._api_up, 30, "the API to answer")

    def _api_up(self) -> bool:
        try:
            return self.api.get("/api/v1/_ping", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def start_worker(
        self, name: str, queues: str, concurrency: int = 4, env: dict[str, str] | None = None
    ) -> None:
        """A worker process; ``env`` adds to (or overrides) the stack's environment."""
        log = self.logs / f"{name}.log"
        seen = log.read_bytes().count(b"ready.") if log.exists() else 0
        self._spawn(
            name,
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--name",
            f"{name}-{uuid.uuid4().hex[:6]}@localhost",
            env=env,
        )
        wait_for(
            lambda: log.read_bytes().count(b"ready.") > seen,
            30,
            f"worker {name} to be ready",
        )

    def start_scheduler(self, name: str) -> None:
        """A ``regscan scheduler`` process; ready once it logs so."""
        log = self.logs / f"{name}.log"
        seen = log.read_bytes().count(b"scheduler ready") if log.exists() else 0
        self._spawn(name, "scheduler")
        wait_for(
            lambda: log.read_bytes().count(b"scheduler ready") > seen,
            30,
            f"scheduler {name} to be ready",
        )

    def terminate(self, name: str) -> int:
        """SIGTERM, as a service manager stops a process; returns its exit code."""
        proc = self.procs.pop(name)
        proc.terminate()
        return proc.wait(timeout=15)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
