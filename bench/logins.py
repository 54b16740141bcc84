"""A logged-in viewer's latency while wrong passwords flood the API, against the same
viewer's latency with no flood, in one run.

Starts its own Redis and one API process (SQLite), issues a viewer API token, then:

  baseline   the viewer's GET /registry/scans, one at a time, nothing else running
  flood      the same while THREADS threads send wrong passwords for the admin as fast
             as they are answered (counted per client address: past the limit, 429)

and prints the median and 95th percentile of both, their ratio, how the flood was
answered, and the API process's memory before and after.

    .venv/bin/python bench/logins.py [--requests 200] [--threads 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

from bench.common import open_database, run_main  # noqa: E402
from bench.enqueue import ADMIN, api_process  # noqa: E402
from testbed.services import RedisServer  # noqa: E402


def viewer_token(base: str) -> str:
    r = requests.post(
        f"{base}/api/v1/tokens",
        auth=ADMIN,
        json={"name": "bench-viewer", "team": "bench", "role": "viewer"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def viewer_latencies(base: str, token: str, count: int, pause: float) -> list[float]:
    seconds = []
    with requests.Session() as http:
        http.headers["Authorization"] = f"Bearer {token}"
        for _ in range(count):
            started = time.perf_counter()
            http.get(f"{base}/api/v1/registry/scans?limit=1", timeout=30).raise_for_status()
            seconds.append(time.perf_counter() - started)
            time.sleep(pause)
    return seconds


def flood(base: str, threads: int, stop: threading.Event) -> Counter[int]:
    answers: Counter[int] = Counter()
    guard = threading.Lock()

    def guess() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                r = http.get(f"{base}/api/v1/registry", auth=(ADMIN[0], "guess"), timeout=60)
                with guard:
                    answers[r.status_code] += 1

    workers = [threading.Thread(target=guess, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    stop.wait()
    for worker in workers:
        worker.join(timeout=60)
    return answers


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def api_pid(port: str) -> int:
    """The pid of the regscan api process listening on ``port``."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if b"api" in cmdline and port.encode() in cmdline:
                    return int(proc.name)
    raise RuntimeError(f"no regscan api on port {port}")


def describe(name: str, seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    print(
        f"{name:<10} median {median * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   n={len(seconds)}"
    )
    return median, p95


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    load = os.getloadavg()[0]
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regscan-bench-")))
    database_url = open_database("sqlite", stack, tmp)
    redis_server = stack.enter_context(RedisServer())
    base = stack.enter_context(api_process(database_url, redis_server.url, tmp / "api.log"))
    token = viewer_token(base)
    pid = api_pid(base.rsplit(":", 1)[1])
    viewer_latencies(base, token, 20, 0.01)  # warm up

    quiet = viewer_latencies(base, token, args.requests, 0.01)
    before = rss_mib(pid)
    stop = threading.Event()
    answered: dict[str, Counter[int]] = {}
    flooding = threading.Thread(target=lambda: answered.update(f=flood(base, args.threads, stop)))
    flooding.start()
    try:
        loud = viewer_latencies(base, token, args.requests, 0.01)
    finally:
        stop.set()
        flooding.join()
    after = rss_mib(pid)

    print(f"viewer GET /registry/scans, {args.requests} requests; flood: {args.threads} threads")
    quiet_median, _ = describe("no flood", quiet)
    loud_median, loud_p95 = describe("flood", loud)
    print(f"ratio flood / no flood (median): {loud_median / quiet_median:.2f}")
    print(f"flood answered: {dict(sorted(answered['f'].items()))}")
    print(f"API memory: {before:.0f} MiB before the flood, {after:.0f} MiB after")
    print(f"machine: {os.cpu_count()} cores, 1-minute load {load:.2f} at the start")
    return 0 if loud_p95 < 0.1 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="viewer requests per phase")
    p.add_argument("--threads", type=int, default=30, help="flooding threads")
    args = p.parse_args(argv)
    return run_main(lambda stack: run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
