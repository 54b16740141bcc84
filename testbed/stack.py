"""The process stack: the API and the workers of one backend as separate processes, and
a client of the API, authenticated as the admin.

The tests start one stack per database backend (``tests/conftest.py``); the fairness
benchmark starts one of its own. Timings are shortened (:data:`FAST_TIMINGS`) so that
lease expiry, takeovers and stops happen within a test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from testbed.services import free_port
from testbed.tls import ServerCertificate

ADMIN = ("admin", "test-admin-password")
WEBHOOK_SECRET = "test-webhook-secret"
CALLBACK_SECRET = "test-callback-secret"
METRICS_TOKEN = "test-metrics-token"
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
    # Every test's client comes from 127.0.0.1: failed logins of one test must not be
    # refused in the next (tests of the limit run an API of their own).
    "REGSCAN_LOGIN_FAILURES": "10000",
    # The tests' callback receivers listen on loopback, reached by this name; loopback
    # addresses themselves stay refused, as everywhere.
    "REGSCAN_CALLBACK_ALLOW": "localhost",
    # On-demand jobs whose queue entry was lost are queued again after this long.
    "REGSCAN_ONDEMAND_REQUEUE_SECONDS": "2",
    # Schedules of a few seconds, and schedulers that look often.
    "REGSCAN_SCHEDULE_MIN_PERIOD_MS": "2000",
    "REGSCAN_SCHEDULE_POLL_SECONDS": "0.2",
    # No vulnerability data from the internet (this machine has none): tests that want
    # the default OSV exports serve them locally and set the URL themselves.
    "REGSCAN_VULNDB_OSV_URL": "",
    # Workers' counters reach /metrics quickly.
    "REGSCAN_METRICS_FLUSH_SECONDS": "0.5",
    # One API process, as tests look at the API's own process (its memory, its pid);
    # tests of several processes ask for them.
    "REGSCAN_API_WORKERS": "1",
}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """``predicate()`` polled every 0.1 s until it is truthy; its value, or AssertionError
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


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
    """The API and the workers of one backend, as separate processes.

    With ``tls`` the API also serves HTTPS with that certificate, on :attr:`tls_port`
    (:attr:`https_base`); the plain HTTP port stays.
    """

    def __init__(
        self, env: dict[str, str], logs: Path, tls: ServerCertificate | None = None
    ) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        if tls is not None:
            env = {
                **env,
                "REGSCAN_TLS_CERT_FILE": str(tls.cert_file),
                "REGSCAN_TLS_KEY_FILE": str(tls.key_file),
                "REGSCAN_API_TLS_PORT": str(self.tls_port),
            }
        self.env = env
        self.api = Api(f"http://127.0.0.1:{self.port}")

    @property
    def https_base(self) -> str:
        """``https://127.0.0.1:PORT`` of the API's TLS listener."""
        assert self.tls_port is not None, "this stack serves no HTTPS"
        return f"https://127.0.0.1:{self.tls_port}"

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
        return _answers(self.api)

    def start_another_api(
        self, name: str, env: dict[str, str] | None = None, timeout: float = 30
    ) -> Api:
        """A second API process on the same database and Redis, on a port of its own,
        with ``env`` added to (or overriding) the stack's environment; its admin client."""
        port = free_port()
        if self.tls is not None:
            # Its HTTPS listener needs a port of its own too.
            env = {"REGSCAN_API_TLS_PORT": str(free_port()), **(env or {})}
        self._spawn(name, "api", "--port", str(port), env=env)
        client = Api(f"http://127.0.0.1:{port}")
        wait_for(lambda: _answers(client), timeout, f"API {name} to answer")
        return client

    def start_worker(
        self,
        name: str,
        queues: str,
        concurrency: int = 4,
        env: dict[str, str] | None = None,
        node: str | None = None,
    ) -> None:
        """A worker process; ``env`` adds to (or overrides) the stack's environment;
        ``node`` is its Celery node name (default: a new one)."""
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
            node or f"{name}-{uuid.uuid4().hex[:6]}@localhost",
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


def _answers(api: Api) -> bool:
    try:
        return api.get("/api/v1/_ping", timeout=1).status_code == 200
    except (requests.ConnectionError, requests.Timeout):  # not up, or still starting
        return False
