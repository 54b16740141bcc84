"""Sweep speed on a registry of many tags: the first sweep, and an unchanged one, against
the rate at which the same registry answers a bare manifest request per tag.

Pushes REPOSITORIES repositories holding TAGS tags in all to a private docker-registry,
TAGS_PER_DIGEST tags on each image (as `latest` and a version tag share one), every
image its own config over one shared small layer. Then, in one run, with its own Redis,
database, API and one worker (regular and images queues):

  baseline     GET of every tag's manifest, one at a time, from one client: the most an
               unchanged sweep could do, asking the registry once per tag
  first sweep  POST /registry/scan, until the job completes
  unchanged    the same again: every image is known, so no blob should be fetched

For each sweep: images (tags) per second, registry requests per tag, blob bytes sent and
blob GETs against the distinct blobs fetched (equal when each image's config and layer
was fetched once, whatever number of tags point at it), from the registry's access log.
Ratios: each sweep's rate against the baseline's.

    .venv/bin/python bench/sweep.py [--tags 10000] [--repositories 100]
                                    [--tags-per-digest 3]
                                    [--database sqlite|postgresql|both] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

from bench.common import (  # noqa: E402
    BenchError,
    database_facts,
    open_database,
    regscan_process,
    run_main,
)
from bench.enqueue import ADMIN, api_process  # noqa: E402
from testbed.images import DOCKER_MANIFEST, Pusher, make_layer  # noqa: E402
from testbed.services import RedisServer, RegistryServer  # noqa: E402

# One access-log line per request: the method, the path, the status and the bytes sent.
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+)'
)


@dataclass
class Served:
    requests: int = 0
    blob_bytes: int = 0
    blob_gets: int = 0
    blobs: set[str] = field(default_factory=set)  # the blob paths fetched at least once


@dataclass
class Phase:
    name: str
    tags: int
    seconds: float
    served: Served
    cpu_seconds: float | None = None  # the worker's, user and system

    @property
    def per_second(self) -> float:
        return self.tags / self.seconds if self.seconds else 0.0

    @property
    def per_tag(self) -> float:
        return self.served.requests / self.tags if self.tags else 0.0


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used so far (Linux /proc), user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def counted(registry: RegistryServer) -> Iterator[Served]:
    """What the registry serves in the block, from its access log."""
    before = _served(registry.read_log())
    served = Served()
    yield served
    time.sleep(0.3)  # the registry writes its line after the answer
    after = _served(registry.read_log())
    served.requests = after.requests - before.requests
    served.blob_bytes = after.blob_bytes - before.blob_bytes
    served.blob_gets = after.blob_gets - before.blob_gets
    served.blobs = _served(registry.read_log(), since=before.requests).blobs


def _served(log: str, since: int = 0) -> Served:
    """What the log says was served, leaving out its first ``since`` requests."""
    served = Served()
    for n, m in enumerate(_ACCESS.finditer(log)):
        if n < since:
            continue
        served.requests += 1
        if m["method"] == "GET" and "/blobs/" in m["path"]:
            served.blob_bytes += int(m["bytes"])
            served.blob_gets += 1
            served.blobs.add(m["path"])
    return served


def populate(pusher: Pusher, tags: int, repositories: int, per_digest: int) -> list[str]:
    """Push the images; every ``repository:tag`` pushed."""
    base = make_layer({"etc/os-release": b"ID=debian\nVERSION_ID=12\n"})
    names = []
    for i in range(tags // per_digest):
        repo = f"bench/app{i % repositories:03d}"
        first = f"v{i}"
        image = pusher.push_image(repo, first, [base], labels={"build": str(i)})
        names.append(f"{repo}:{first}")
        for k in range(1, per_digest):
            alias = f"v{i}-{k}"
            pusher.push_manifest(repo, alias, image.manifest_bytes, DOCKER_MANIFEST)
            names.append(f"{repo}:{alias}")
    return names


def baseline(registry: RegistryServer, names: list[str]) -> Phase:
    with requests.Session() as http, counted(registry) as served:
        started = time.perf_counter()
        for name in names:
            repo, tag = name.split(":")
            r = http.get(
                f"{registry.url}/v2/{repo}/manifests/{tag}",
                headers={"Accept": DOCKER_MANIFEST},
                timeout=30,
            )
            r.raise_for_status()
        seconds = time.perf_counter() - started
    return Phase("baseline: a bare manifest GET per tag", len(names), seconds, served)


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy's record of the worker while the block runs (raw, for a flame graph)."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


def sweep(name: str, base: str, registry: RegistryServer, tags: int, worker: int) -> Phase:
    cpu = cpu_seconds(worker)
    with counted(registry) as served:
        started = time.perf_counter()
        r = requests.post(f"{base}/api/v1/registry/scan", auth=ADMIN, timeout=60)
        if r.status_code != 200:
            raise BenchError(f"sweep refused: {r.status_code} {r.text}")
        job = _wait(base, r.json()["id"])
        seconds = time.perf_counter() - started
    counts = job["counts"]
    if job["status"] != "completed" or counts["scanned"] != tags:
        raise BenchError(f"{name}: {job['status']} with {json.dumps(counts)}, expected {tags}")
    return Phase(name, tags, seconds, served, cpu_seconds(worker) - cpu)


def _wait(base: str, job_id: int) -> dict:
    while True:
        job = requests.get(f"{base}/api/v1/registry/scans/{job_id}", auth=ADMIN, timeout=60)
        body = job.json()
        if body["status"] in ("completed", "stopped", "failed"):
            return body
        time.sleep(0.25)


def report(phases: list[Phase], facts: list[str]) -> None:
    base = phases[0]
    for p in phases:
        print(
            f"{p.name:<40} {p.per_second:8.1f} tags/s  {p.seconds:7.1f} s  "
            f"{p.per_tag:5.2f} requests/tag  {p.served.blob_bytes:>12} blob bytes  "
            f"{p.served.blob_gets:>6} blob GETs of {len(p.served.blobs)} blobs"
            + (f"  worker CPU {p.cpu_seconds / p.tags * 1000:.2f} ms/tag" if p.cpu_seconds else "")
        )
    for p in phases[1:]:
        print(f"ratio {p.name} / baseline: {p.per_second / base.per_second:.3f}")
    for line in facts:
        print(line)


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regscan-bench-")))
    registry = stack.enter_context(RegistryServer())
    started = time.perf_counter()
    names = populate(Pusher(registry.url), args.tags, args.repositories, args.tags_per_digest)
    print(f"pushed {len(names)} tags in {time.perf_counter() - started:.0f} s", flush=True)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for kind in kinds:
        with contextlib.ExitStack() as own:
            measure(args, kind, registry, names, own, tmp / kind)
    return 0


def measure(
    args: argparse.Namespace,
    kind: str,
    registry: RegistryServer,
    names: list[str],
    stack: contextlib.ExitStack,
    tmp: Path,
) -> None:
    """The baseline and both sweeps on a database of ``kind`` of their own."""
    load = os.getloadavg()[0]
    tmp.mkdir()
    database_url = open_database(kind, stack, tmp)
    redis = stack.enter_context(RedisServer())
    base = stack.enter_context(api_process(database_url, redis.url, tmp / "api.log"))
    env = {"REGSCAN_DATABASE_URL": database_url, "REGSCAN_REDIS_URL": redis.url}
    worker = ["worker", "--queues", "regular,images", "--concurrency", str(args.concurrency)]
    worker_process = stack.enter_context(regscan_process(worker, env, tmp / "worker.log"))
    spec = {
        "version": "2",
        "registry": registry.url,
        "repository": "bench/*",
        "cap": 0,
        "scanners": args.scanners,
    }
    r = requests.put(
        f"{base}/api/v1/settings/registry?scanLater=true",
        auth=ADMIN,
        json={"specifications": [spec]},
        timeout=30,
    )
    r.raise_for_status()
    phases = [baseline(registry, names)]
    for phase in ("first sweep", "unchanged sweep"):
        out = args.py_spy / f"{kind}-{phase.split()[0]}.txt" if args.py_spy else None
        with profiled(worker_process.pid, out):
            phases.append(sweep(phase, base, registry, len(names), worker_process.pid))
    facts = [
        f"registry: {args.repositories} repositories, {len(names)} tags, "
        f"{args.tags_per_digest} tags per image; worker: {args.concurrency} threads, "
        f"scanners={args.scanners}",
        f"database: {database_facts(kind, database_url)}",
        f"machine: {os.cpu_count()} cores, 1-minute load {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end",
    ]
    report(phases, facts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, default=10_000)
    p.add_argument("--repositories", type=int, default=100)
    p.add_argument("--tags-per-digest", type=int, default=3)
    p.add_argument(
        "--database",
        choices=["sqlite", "postgresql", "both"],
        default="sqlite",
        help="both: one after the other, against the same registry",
    )
    p.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    p.add_argument("--scanners", type=int, default=16, help="images of the sweep at once")
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record the worker with py-spy during each sweep (DIR/<database>-first.txt, ...)",
    )
    args = p.parse_args(argv)
    return run_main(lambda stack: run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
