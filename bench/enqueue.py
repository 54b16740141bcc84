"""On-demand enqueues per second through the API, against raw Celery publishing.

Both phases publish to the same private Redis in the same run, so the ratio shows what
the API path (HTTP, auth, scope check, job and image rows, commit) costs on top of the
Celery publish it ends with. No worker and no registry run: messages pile up in the
``regscan.ondemand`` list, and its length proves that every accepted enqueue landed.

    .venv/bin/python bench/enqueue.py [--requests N] [--clients C] [--api-workers W]
                                      [--database sqlite|postgresql]

Without ``--requests`` the raw phase sends 2000 messages and the API phase 1000; the
figures compared are per second, so the counts need not match. The API runs as the
README recommends: ``regscan api`` with one process per core (``--api-workers``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # `testbed`, `worker` and `regscan` are imported from the checkout, wherever we run from.
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402
from redis import Redis  # noqa: E402

from bench.common import (  # noqa: E402
    BenchError,
    database_facts,
    open_database,
    regscan_process,
    run_main,
)
from core import tasks  # noqa: E402
from core.settings import MAX_API_WORKERS, Settings, usable_cores  # noqa: E402
from core.tasks import make_celery  # noqa: E402
from testbed.services import RedisServer, free_port  # noqa: E402

ADMIN = ("admin", "bench-admin-password")
REGISTRY = "127.0.0.1:5999"
SPEC = {"version": "2", "registry": f"http://{REGISTRY}", "repository": "bench/*"}
DEFAULT_RAW_REQUESTS = 2000
DEFAULT_API_REQUESTS = 1000

# One client's single enqueue: None when accepted, else what went wrong.
Call = Callable[[int], str | None]


@dataclass
class Phase:
    name: str
    requests: int
    seconds: float
    failures: int
    landed: int
    first_error: str | None

    @property
    def accepted(self) -> int:
        return self.requests - self.failures

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


# -- running clients ---------------------------------------------------------------


def run_clients(calls: list[Call], first: int, count: int, stop: threading.Event) -> Phase:
    """Spread indices first..first+count over one thread per call; time them all."""
    indices = iter(range(first, first + count))
    guard = threading.Lock()
    failures: list[str] = []
    go = threading.Event()

    def client(call: Call) -> None:
        go.wait()
        while not stop.is_set():
            with guard:
                i = next(indices, None)
            if i is None:
                return
            error = call(i)
            if error is not None:
                with guard:
                    failures.append(error)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    # Threads exist before the clock starts, so their creation is not measured.
    started = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return Phase("", count, seconds, len(failures), 0, failures[0] if failures else None)


def measure(
    name: str, calls: list[Call], count: int, warmup: int, redis: Redis, stop: threading.Event
) -> Phase:
    """Warm up (not counted), empty the queue, then time ``count`` enqueues."""
    warm = run_clients(calls, 0, warmup, stop)
    if warm.failures:
        raise BenchError(f"{name}: warm-up failed {warm.failures} times: {warm.first_error}")
    redis.delete(tasks.QUEUE_ONDEMAND)
    phase = run_clients(calls, warmup, count, stop)
    phase.name = name
    phase.landed = int(redis.llen(tasks.QUEUE_ONDEMAND))
    redis.delete(tasks.QUEUE_ONDEMAND)
    return phase


def raw_calls(celery: Any, clients: int) -> list[Call]:
    """C clients sharing one Celery app, as the API process shares its own."""

    def call(i: int) -> str | None:
        try:
            celery.send_task(tasks.TASK_ONDEMAND, args=[i], queue=tasks.QUEUE_ONDEMAND)
        except Exception as exc:  # any failure is counted, not fatal
            return f"{type(exc).__name__}: {exc}"
        return None

    return [call] * clients


def api_calls(base: str, clients: int, stack: contextlib.ExitStack) -> list[Call]:
    """C clients, each with its own keep-alive session, as separate scanners would be."""
    calls = []
    for _ in range(clients):
        http = stack.enter_context(requests.Session())
        http.auth = ADMIN
        calls.append(_api_call(base, http))
    return calls


def _api_call(base: str, http: requests.Session) -> Call:
    url = f"{base}/api/v1/registry/scan"

    def call(i: int) -> str | None:
        tag = {"registry": REGISTRY, "repo": "bench/app", "tag": f"t{i}", "digest": ""}
        try:
            r = http.post(url, json={"onDemandScan": True, "tag": tag}, timeout=30)
        except requests.RequestException as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"

    return call


# -- the services under test ---------------------------------------------------------


@contextlib.contextmanager
def api_process(
    database_url: str, redis_url: str, log_path: Path, workers: int = 1
) -> Iterator[str]:
    """``regscan api`` with ``workers`` processes on a free port; yields its base URL once
    every process serves, and stops them afterwards."""
    port = free_port()
    env = {
        "REGSCAN_DATABASE_URL": database_url,
        "REGSCAN_REDIS_URL": redis_url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
    }
    args = ["api", "--port", str(port), "--workers", str(workers)]
    with regscan_process(args, env, log_path) as proc:
        base = f"http://127.0.0.1:{port}"
        _wait_api(proc, base, log_path, workers)
        yield base


def _wait_api(proc: subprocess.Popen[bytes], base: str, log_path: Path, workers: int) -> None:
    """Until the API answers and each of its processes has said it serves (the first to
    answer must not take the measured requests alone while the others still start)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        started = log_path.read_text(errors="replace").count("Application startup complete")
        with contextlib.suppress(requests.RequestException):
            answered = requests.get(f"{base}/api/v1/_ping", timeout=1).status_code == 200
            if answered and started >= workers:
                return
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"regscan api did not come up:\n{tail}")


def configure_specs(base: str) -> None:
    r = requests.put(
        f"{base}/api/v1/settings/registry",
        params={"scanLater": "true"},
        json={"specifications": [SPEC]},
        auth=ADMIN,
        timeout=30,
    )
    if r.status_code != 200:
        raise BenchError(f"configuring the registry specification: HTTP {r.status_code} {r.text}")


# -- reporting ---------------------------------------------------------------------


def machine_facts(args: argparse.Namespace, db: str, redis: Redis, load: float) -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return [
        f"cpus: {os.cpu_count()} (usable {affinity})  python: {py}  "
        f"os: {platform.system()} {platform.machine()}  load before the run: {load:.2f}",
        f"database: {db}  redis: {redis.info('server')['redis_version']} (local, no persistence)",
        f"clients: {args.clients} threads per phase, {args.warmup} warm-up enqueues per phase "
        f"not counted; API processes: {args.api_workers}; clients, API and Redis share "
        "this machine",
    ]


def report(raw: Phase, api: Phase, facts: list[str]) -> None:
    print(f"{'phase':<36}{'requests':>9}{'seconds':>9}{'per second':>12}")
    for p in (raw, api):
        print(f"{p.name:<36}{p.requests:>9}{p.seconds:>9.3f}{p.per_second:>12.1f}")
    for p in (raw, api):
        print(
            f"{p.name}: accepted {p.accepted}, failed {p.failures}, "
            f"messages in {tasks.QUEUE_ONDEMAND}: {p.landed}"
        )
        if p.first_error:
            print(f"  first failure: {p.first_error}")
    ratio = api.per_second / raw.per_second if raw.per_second else 0.0
    inverse = f"1 : {1 / ratio:.1f}" if ratio else "n/a"
    print(f"ratio: API on-demand enqueue / raw apply_async = {ratio:.4f} ({inverse})")
    for line in facts:
        print(line)


def check(phase: Phase) -> list[str]:
    problems = []
    if phase.failures:
        problems.append(f"{phase.name}: {phase.failures} of {phase.requests} enqueues failed")
    if phase.landed != phase.accepted:
        problems.append(
            f"{phase.name}: {phase.accepted} accepted but {phase.landed} messages in Redis"
        )
    return problems


# -- the run -----------------------------------------------------------------------


def run(args: argparse.Namespace, stack: contextlib.ExitStack, stop: threading.Event) -> int:
    # Other work on the machine skews every figure; the 1-minute load says how busy it was.
    load = os.getloadavg()[0]
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regscan-bench-")))
    database_url = open_database(args.database, stack, tmp)
    redis_server = stack.enter_context(RedisServer())
    redis = stack.enter_context(Redis.from_url(redis_server.url))
    serving = api_process(database_url, redis_server.url, tmp / "api.log", args.api_workers)
    base = stack.enter_context(serving)
    configure_specs(base)

    settings = Settings(database_url=database_url, redis_url=redis_server.url)
    celery = make_celery(settings)
    stack.callback(celery.close)
    raw_n = args.requests or DEFAULT_RAW_REQUESTS
    api_n = args.requests or DEFAULT_API_REQUESTS
    raw = measure(
        "A raw send_task", raw_calls(celery, args.clients), raw_n, args.warmup, redis, stop
    )
    calls = api_calls(base, args.clients, stack)
    api = measure("B API POST /registry/scan", calls, api_n, args.warmup, redis, stop)

    db = database_facts(args.database, database_url)
    report(raw, api, machine_facts(args, db, redis, load))
    problems = check(raw) + check(api)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"enqueues per phase (default: {DEFAULT_RAW_REQUESTS} raw, "
        f"{DEFAULT_API_REQUESTS} through the API)",
    )
    p.add_argument("--clients", type=int, default=4, help="client threads (default: 4)")
    p.add_argument(
        "--api-workers",
        type=int,
        default=usable_cores(),
        help="API processes (default: the cores, as REGSCAN_API_WORKERS defaults to)",
    )
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--warmup", type=int, default=50, help="uncounted enqueues per phase")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.clients < 1 or (args.requests is not None and args.requests < 1):
        _parser().error("--requests and --clients must be at least 1")
    if not 1 <= args.api_workers <= MAX_API_WORKERS:
        _parser().error(f"--api-workers must be 1 to {MAX_API_WORKERS}")
    stop = threading.Event()
    # The clients stop before the API and Redis they talk to.
    return run_main(lambda stack: run(args, stack, stop), before_cleanup=stop.set)


if __name__ == "__main__":
    sys.exit(main())
