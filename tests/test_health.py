"""``/healthz``, ``/readyz`` and ``regscan worker-check`` against real faults: a stack of
this module's own, whose Redis is stopped and started again on the same port, and whose
database schema is taken one migration back and forward again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from alembic import command

from regscan.db import alembic_config
from testbed.services import RedisServer, free_port
from testbed.stack import Stack, wait_for
from tests.conftest import stack_env

pytestmark = pytest.mark.e2e

WORKER = "probed@localhost"


@dataclass
class Service:
    stack: Stack
    redis: RedisServer
    database_url: str

    def get(self, path: str) -> requests.Response:
        return requests.get(self.stack.api.base + path, timeout=10)

    def worker_check(self, name: str = WORKER) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "regscan.cli", "worker-check", "--name", name, "--timeout", "3"],
            env=self.stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="module")
def service(own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    redis = RedisServer(port=free_port()).start()
    stack = Stack(stack_env(own_database, redis.url), tmp_path_factory.mktemp("logs"))
    state = Service(stack, redis, own_database)
    try:
        stack.start_api()
        stack.start_worker("worker", "ondemand", node=WORKER)
        yield state
    finally:
        stack.stop()
        state.redis.stop()


def test_ready_while_everything_answers(service: Service):
    assert service.get("/healthz").json() == {"status": "ok"}
    r = service.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
    done = service.worker_check()
    assert (done.returncode, done.stdout.strip()) == (0, f"worker {WORKER} is healthy")


def test_redis_stopped_is_not_ready_naming_redis_and_ready_again_once_restarted(
    service: Service,
):
    # When Redis stops
    port = service.redis.port
    service.redis.stop()
    try:
        # Then /readyz answers 503 naming Redis, /healthz still 200, the worker check fails
        r = service.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert "Redis is not answering" in body["err"]
        assert body["checks"] == {"database": "ok", "redis": body["checks"]["redis"]}
        assert body["checks"]["redis"].startswith("Redis is not answering")
        assert str(port) not in r.text  # no addresses to an unauthenticated caller
        assert r.headers["Retry-After"]
        assert service.get("/healthz").status_code == 200
        done = service.worker_check()
        assert done.returncode == 1
        assert done.stderr.startswith("regscan: worker ") and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    finally:
        # When it is started again on the same port
        service.redis = RedisServer(port=port).start()

    # Then the service is ready again, and the worker answers its check again
    wait_for(lambda: service.get("/readyz").status_code == 200, 30, "/readyz to answer 200")
    wait_for(lambda: service.worker_check().returncode == 0, 60, "the worker to reconnect")


def test_a_schema_behind_the_newest_migration_is_not_ready(service: Service):
    config = alembic_config(service.database_url)
    command.downgrade(config, "-1")
    try:
        r = service.get("/readyz")
        assert r.status_code == 503, r.text
        assert "run `regscan db upgrade`" in r.json()["err"]
        assert r.json()["checks"]["redis"] == "ok"
    finally:
        command.upgrade(config, "head")
    assert service.get("/readyz").status_code == 200


def test_a_worker_that_is_not_there_fails_its_check_in_one_line(service: Service):
    done = service.worker_check("nobody@nowhere")
    assert done.returncode == 1
    assert done.stderr == "regscan: worker nobody@nowhere did not answer a ping within 3s\n"
