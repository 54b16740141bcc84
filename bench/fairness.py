"""On-demand latency of a light team while a heavy team floods, against no flood.

Starts its own Redis, registry, SQLite database, API and one on-demand worker (4
threads), pushes two images, and gives each team an operator token. Then, in the same
run:

  quiet   the light team asks for on-demand scans one at a time; each latency is
          from the POST to the job's completion
  flood   the heavy team first enqueues a bulk of on-demand scans, then the light team
          asks again, one at a time, while the flood is being worked through

and prints the median latencies and their ratio (flood / quiet). Without fairness the
light team would wait behind the whole flood; with it, the workers take teams in turn.

    .venv/bin/python bench/fairness.py [--flood 1000] [--samples 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.db import make_engine, make_sessionmaker  # noqa: E402
from models.jobs import active_on_demand  # noqa: E402
from regscan.db import upgrade  # noqa: E402
from testbed.images import Pusher  # noqa: E402
from testbed.services import RedisServer, RegistryServer  # noqa: E402
from testbed.stack import Api, Stack, wait_for  # noqa: E402

ADMIN = ("admin", "bench-admin-password")
V1 = "/api/v1"


def start(tmp: Path, redis: RedisServer, flood: int) -> Stack:
    db = f"sqlite:///{tmp / 'regscan.db'}"
    upgrade(db)
    env = {
        **os.environ,
        "REGSCAN_DATABASE_URL": db,
        "REGSCAN_REDIS_URL": redis.url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
        "REGSCAN_TEAM_ONDEMAND_LIMIT": str(flood + 100),
    }
    logs = tmp / "logs"
    logs.mkdir()
    stack = Stack(env, logs)
    stack.api.http.auth = ADMIN
    stack.start_api()
    stack.start_worker("ondemand", "ondemand", concurrency=4)
    return stack


def team_client(stack: Stack, team: str) -> Api:
    made = stack.api.post(f"{V1}/tokens", json={"name": team, "team": team, "role": "operator"})
    made.raise_for_status()
    client = Api(stack.api.base, auth=None)
    client.http.headers["Authorization"] = f"Bearer {made.json()['token']}"
    return client


def latencies(client: Api, admin: Api, image: dict, samples: int) -> list[float]:
    """Seconds from asking for an on-demand scan to its completion, one at a time."""
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        job = client.scan({"onDemandScan": True, "tag": image}).json()
        done = admin.wait_job(job["id"], timeout=600)
        if done["status"] != "completed":
            raise SystemExit(f"scan {job['id']} ended {done['status']}: {done['error']}")
        out.append(time.perf_counter() - started)
    return out


def unfinished(stack: Stack, team: str) -> int:
    """The team's on-demand scans still waiting or running, read from the database."""
    engine = make_engine(stack.env["REGSCAN_DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as session:
            return active_on_demand(session, team)
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=1000, help="heavy team's bulk (<= 1000)")
    parser.add_argument("--samples", type=int, default=10, help="light team scans per phase")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="regscan-fair-") as tmp,
        RedisServer() as redis,
        RegistryServer() as registry,
    ):
        pusher = Pusher(registry.url)
        pusher.push_image("bench/heavy", "1", {"h": b"1"})
        pusher.push_image("bench/light", "1", {"l": b"1"})
        stack = start(Path(tmp), redis, args.flood)
        try:
            return run(stack, registry, args.flood, args.samples)
        finally:
            stack.stop()


def run(stack: Stack, registry: RegistryServer, flood: int, samples: int) -> int:
    admin = stack.api
    spec = {"version": "2", "registry": f"http://{registry.host}", "repository": "bench/*"}
    admin.set_specs(spec)
    heavy, light = team_client(stack, "heavy"), team_client(stack, "light")
    light_image = {"registry": registry.host, "repo": "bench/light", "tag": "1"}
    heavy_image = {**light_image, "repo": "bench/heavy"}
    latencies(light, admin, light_image, 2)  # warm-up: imports, connections, layer cache
    quiet = latencies(light, admin, light_image, samples)

    started = time.perf_counter()
    bulk = heavy.post(f"{V1}/registry/scan/bulk", json={"images": [heavy_image] * flood})
    bulk.raise_for_status()
    assert bulk.json()["queued"] == flood, bulk.text
    flooded = latencies(light, admin, light_image, samples)
    left = unfinished(stack, "heavy")
    wait_for(lambda: unfinished(stack, "heavy") == 0, 900, "the flood to drain")
    drained = time.perf_counter() - started
    report(quiet, flooded, flood, left, drained, samples)
    return 0


def report(
    quiet: list[float], flooded: list[float], flood: int, left: int, drained: float, samples: int
) -> None:
    q, f = statistics.median(quiet), statistics.median(flooded)
    print(f"{'phase':<40}{'median s':>10}{'max s':>8}")
    print(f"{'light team, no flood':<40}{q:>10.3f}{max(quiet):>8.3f}")
    print(f"{'light team, heavy team flooding':<40}{f:>10.3f}{max(flooded):>8.3f}")
    print(f"ratio: flood / no flood = {f / q:.2f} (median of {samples} scans each)")
    print(
        f"flood: {flood} on-demand scans; {left} still unfinished when the light team's "
        f"last scan completed; all done after {drained:.1f} s"
    )
    print(
        f"machine: {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}; one on-demand worker with 4 threads; SQLite"
    )


if __name__ == "__main__":
    sys.exit(main())
