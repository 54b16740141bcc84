"""Several API processes on one port (``REGSCAN_API_WORKERS``, ``regscan api --workers``):
each of them serves, and what a request depends on (API tokens, failed logins,
idempotency keys) is shared between them through the database and Redis, so it holds
whichever process a request reaches. Bad worker counts are refused with a clear error."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydantic import ValidationError
from redis import Redis

from core import keys
from core.settings import MAX_API_WORKERS, Settings, usable_cores
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import ADMIN, Api, Stack, wait_for

V1 = "/api/v1"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Two API processes start side by side, each taking as long as one does.
STARTUP = 90


# -- the setting -------------------------------------------------------------------------


def test_the_api_runs_one_process_per_core_unless_told_otherwise():
    assert Settings().api_workers == usable_cores()
    assert Settings(api_workers=3).api_workers == 3


@pytest.mark.e2e  # runs the command: about a second each
@pytest.mark.parametrize("value", ["0", "-2", str(MAX_API_WORKERS + 1), "two", "1.5", ""])
def test_a_bad_worker_count_is_refused_with_the_variable_named(value: str):
    # The settings object refuses it ...
    with pytest.raises(ValidationError):
        Settings(api_workers=value)  # type: ignore[arg-type]

    # ... and so does the command, in one line naming the variable, before it starts anything
    result = _regscan(["api"], {"REGSCAN_API_WORKERS": value})
    assert result.returncode == 2
    assert result.stderr.startswith("regscan: invalid configuration: REGSCAN_API_WORKERS")
    assert "Traceback" not in result.stderr


@pytest.mark.e2e  # runs the command
@pytest.mark.parametrize("value", ["0", str(MAX_API_WORKERS + 1), "many"])
def test_a_bad_workers_option_is_refused_by_the_command(value: str):
    result = _regscan(["api", "--workers", value], {})
    assert result.returncode == 2
    assert "--workers" in result.stderr and "Traceback" not in result.stderr


def _regscan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGSCAN_")}
    return subprocess.run(
        [sys.executable, "-m", "regscan.cli", *args],
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- several processes serving -----------------------------------------------------------


@dataclass
class Workers:
    """An API of two processes on the stack's database and Redis."""

    base: str
    supervisor: subprocess.Popen[bytes]
    pids: list[int]

    @contextlib.contextmanager
    def only(self, pid: int) -> Iterator[None]:
        """Every request on a new connection reaches process ``pid``: the others are
        paused (SIGSTOP), so they accept none."""
        others = [p for p in self.pids if p != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[Workers]:
    name = f"workers-api-{uuid.uuid4().hex[:6]}"
    env = {"REGSCAN_API_WORKERS": "2", "REGSCAN_LOGIN_FAILURES": "3"}
    client = stack.start_another_api(name, env=env, timeout=STARTUP)
    supervisor = stack.procs[name]
    pids = _serving(supervisor)
    served = Workers(client.base, supervisor, pids)
    # Each process has started serving, not only the first to answer.
    for pid in pids:
        with served.only(pid):
            wait_for(lambda: _pings(served), STARTUP, f"API process {pid} to answer")
    yield served
    supervisor.terminate()
    supervisor.wait(timeout=30)


def _serving(supervisor: subprocess.Popen[bytes]) -> list[int]:
    """The API processes ``regscan api`` started, once there are two."""
    two: list[int] = wait_for(
        lambda: len(_children(supervisor.pid)) == 2 and _children(supervisor.pid), STARTUP
    )
    return two


def _pings(workers: Workers) -> bool:
    try:
        return _fresh(workers, "GET", f"{V1}/_ping").status_code == 200
    except (requests.ConnectionError, requests.Timeout):
        return False


def _fresh(
    workers: Workers, method: str, path: str, token: str | None = None, **kwargs: object
) -> requests.Response:
    """A request on a new connection (a kept one stays with the process that took it)."""
    headers = {"Connection": "close", **({"Authorization": f"Bearer {token}"} if token else {})}
    extra = dict(kwargs)
    headers.update(extra.pop("headers", {}))  # type: ignore[arg-type]
    return requests.request(
        method,
        workers.base + path,
        headers=headers,
        timeout=(1, 30),
        **extra,  # type: ignore[arg-type]
    )


def test_each_process_serves_the_port_and_they_stop_with_the_command(stack: Stack):
    # Given `regscan api` with REGSCAN_API_WORKERS=2
    name = f"stopping-api-{uuid.uuid4().hex[:6]}"
    client = stack.start_another_api(name, env={"REGSCAN_API_WORKERS": "2"}, timeout=STARTUP)
    supervisor = stack.procs[name]
    pids = _serving(supervisor)
    served = Workers(client.base, supervisor, pids)

    # Then each of its two processes answers alone on the one port
    for pid in pids:
        with served.only(pid):
            wait_for(lambda: _pings(served), STARTUP, f"API process {pid} to answer")

    # When it is stopped, both stop with it and the port is free
    supervisor.terminate()
    assert supervisor.wait(timeout=30) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    with pytest.raises(requests.ConnectionError):
        requests.get(client.base + f"{V1}/_ping", timeout=1)


def test_a_token_issued_or_revoked_holds_in_every_process(workers: Workers, api: Api):
    # Given an operator's API token
    fields = {"name": f"w-{uuid.uuid4().hex[:6]}", "team": "tw", "role": "operator"}
    made = api.post(f"{V1}/tokens", json=fields)
    made.raise_for_status()
    token, token_id = made.json()["token"], made.json()["id"]

    # Then each process knows it
    for pid in workers.pids:
        with workers.only(pid):
            assert _fresh(workers, "GET", f"{V1}/registry/scans", token).status_code == 200

    # And once revoked, each process refuses it
    assert api.request("DELETE", f"{V1}/tokens/{token_id}").status_code == 200
    for pid in workers.pids:
        with workers.only(pid):
            refused = _fresh(workers, "GET", f"{V1}/registry/scans", token)
            assert refused.status_code == 401 and "revoked" in refused.json()["err"]


def test_an_idempotency_key_gives_one_job_whichever_process_answers(
    workers: Workers, api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given an image in scope
    pusher.push_image(f"{name}/app", "1.0", {"app": name.encode()})
    api.set_specs(
        {"version": "2", "registry": f"http://{registry.host}", "repository": f"{name}/*"}
    )
    tag = {"registry": registry.host, "repo": f"{name}/app", "tag": "1.0"}
    body = {"onDemandScan": True, "tag": tag}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first, second = workers.pids

    # When the same request with one key reaches one process, then the other
    with workers.only(first):
        one = _fresh(workers, "POST", f"{V1}/registry/scan", json=body, headers=key, auth=ADMIN)
    with workers.only(second):
        two = _fresh(workers, "POST", f"{V1}/registry/scan", json=body, headers=key, auth=ADMIN)

    # Then the second is the first's answer replayed: one job
    assert one.status_code == two.status_code == 200, two.text
    assert two.json() == one.json() and two.headers.get("Idempotent-Replayed") == "true"
    api.wait_job(one.json()["id"])


# Last: a process remembers for a while a client it refused for too many failures, so
# the tests before it must not come after it.
def test_failed_logins_are_counted_across_the_processes(workers: Workers, stack: Stack):
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    for key in redis.scan_iter(keys.login_failures_of_client("*")):
        redis.delete(key)
    first, second = workers.pids
    guess = {"auth": ("someone", "wrong")}
    try:
        # When a client fails its three allowed logins on one process
        with workers.only(first):
            answers = [_fresh(workers, "GET", f"{V1}/registry", **guess) for _ in range(3)]
            assert [r.status_code for r in answers] == [401, 401, 401]

        # Then the other process refuses its next attempt too
        with workers.only(second):
            refused = _fresh(workers, "GET", f"{V1}/registry", **guess)
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    finally:
        for key in redis.scan_iter(keys.login_failures_of_client("*")):
            redis.delete(key)
