"""Layer analysis speed and memory on one large generated layer.

Generates a gzip layer of at least 500 MB uncompressed (package databases among
bulk files), then times, on the same file in the same run:

  baseline   gzip -dc layer.tar.gz | tar -t > /dev/null
  regscan    scanner.inventory.analysis.analyse_layer with every cataloger, in a child
             process, once per way of inflating: each zlib implementation installed
             (isal, zlib-ng, the standard library's), with the read-ahead thread and
             without it; timed inside the child, from opening the file to the analysis
             (a worker has its interpreter started and its modules imported already)

The runs take turns, best of each kept. Prints each way's ratio to the baseline, plus
the peak RSS of the process analysing the default way against its RSS before it reads
anything.

With ``--layer debian`` the layer is instead the Debian base layer of
``bench/first_scan.py`` (this machine's base packages and their files: real binaries,
libraries and text, as images hold them), to compare the inflaters on real data.

    .venv/bin/python bench/analyse.py [--size-mb 600] [--runs 3] [--layer generated|debian]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 1 << 20


def generate(path: Path, size_mb: int) -> int:
    """Write the layer: real package files plus bulk files; return uncompressed bytes."""
    gz = subprocess.Popen(["gzip", "-6"], stdin=subprocess.PIPE, stdout=path.open("wb"))
    assert gz.stdin is not None
    rng = random.Random(1)
    written = 0
    with tarfile.open(fileobj=gz.stdin, mode="w|") as tar:
        for name, data in package_files():
            written += add(tar, name, data)
        block = rng.randbytes(CHUNK // 2) + b"regscan " * (CHUNK // 16)  # ~2:1 compressible
        n = 0
        while written < size_mb * 1_000_000:
            written += add(tar, f"usr/share/bulk/{n // 100:03d}/blob{n:05d}.bin", block)
            n += 1
    gz.stdin.close()
    gz.wait()
    return written


def debian(path: Path) -> int:
    """Write first_scan.py's Debian base layer; return its uncompressed bytes."""
    from bench.first_scan import debian_layer, debian_packages

    blob = debian_layer(debian_packages())
    path.write_bytes(blob.data)
    return len(gzip.decompress(blob.data))


def package_files() -> list[tuple[str, bytes]]:
    files = [("var/lib/dpkg/status", Path("/var/lib/dpkg/status").read_bytes())]
    files.append(("etc/os-release", Path("/etc/os-release").read_bytes()))
    for i in range(300):
        meta = f"Metadata-Version: 2.1\nName: pkg{i}\nVersion: 1.{i}\n".encode()
        files.append((f"usr/lib/python3/dist-packages/pkg{i}-1.{i}.dist-info/METADATA", meta))
    for i in range(2000):
        pj = json.dumps({"name": f"mod{i}", "version": f"2.0.{i}"}).encode()
        files.append((f"app/node_modules/mod{i}/package.json", pj))
    return files


def add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))
    return len(data)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def timed(argv: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of a child process."""
    start = time.perf_counter()
    out = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True).stdout
    return time.perf_counter() - start, out


def child(path: str, digest: str, inflater: str, read_ahead: str) -> None:
    """Run in a child process: analyse the layer, print the seconds it took (a worker
    has the interpreter started and the modules imported already), what was found and
    the RSS."""
    from scanner.inventory.analysis import analyse_layer
    from scanner.inventory.catalogers import ALL
    from scanner.inventory.results import Limits

    idle_rss = peak_rss_kib()
    start = time.perf_counter()
    with open(path, "rb") as stream:
        analysis = analyse_layer(
            stream,
            digest=digest,
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            catalogers=ALL,
            limits=Limits(max_expanded_bytes=64 << 30),
            inflater=inflater,
            read_ahead=read_ahead == "read-ahead",
        )
    seconds = time.perf_counter() - start
    found = sum(len(p) for p in analysis.packages.values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "inflate_cpu": inflate_cpu(path, inflater),
                "packages": found,
                "expanded": analysis.expanded_bytes,
                "idle_rss_kib": idle_rss,
                "peak_rss_kib": peak_rss_kib(),
            }
        )
    )


def inflate_cpu(path: str, inflater: str) -> float:
    """CPU seconds the inflater alone takes over the layer, in this thread (the
    machine's other work does not count, as it does in wall seconds)."""
    from scanner.inventory.codecs import INFLATERS, GzipMembers

    with open(path, "rb") as stream:
        members = GzipMembers(stream, INFLATERS[inflater])
        start = time.thread_time()
        while members.read(1 << 20):
            pass
        return time.thread_time() - start


def peak_rss_kib() -> int:
    # VmHWM is this program's own peak; getrusage's ru_maxrss would also count the
    # parent's memory, which a forked child inherits as its starting peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc/self/status")


def ways() -> list[tuple[str, bool]]:
    """(inflater, read-ahead) pairs to time: every inflater installed, with and without
    the read-ahead thread, the default first."""
    from scanner.inventory.codecs import INFLATER, INFLATERS

    names = [INFLATER, *(name for name in INFLATERS if name != INFLATER)]
    return [(name, read_ahead) for name in names for read_ahead in (True, False)]


def measure(layer: Path, digest: str, expanded: int, runs: int):
    """The baseline's best seconds, and each way's best seconds (and inflate CPU) with
    its last findings. The runs take turns, so that a busy moment of the machine does
    not fall on one way."""
    pipeline = ["bash", "-o", "pipefail", "-c", f"gzip -dc {layer} | tar -t > /dev/null"]
    baseline = float("inf")
    timings: dict[tuple[str, str], dict] = {}  # the last findings, with the best times
    for _ in range(runs):
        baseline = min(baseline, timed(pipeline)[0])
        for inflater, read_ahead in ways():
            mode = "read-ahead" if read_ahead else "inline"
            argv = [sys.executable, __file__, "--child", str(layer), digest, inflater, mode]
            found = json.loads(timed(argv)[1])
            # Every way must have read the whole layer for the times to compare.
            if found["expanded"] < expanded:
                raise SystemExit(f"{inflater} read {found['expanded']} of {expanded} bytes")
            before = timings.get((inflater, mode), found)
            found["seconds"] = min(before["seconds"], found["seconds"])
            found["inflate_cpu"] = min(before["inflate_cpu"], found["inflate_cpu"])
            timings[inflater, mode] = found
    return baseline, [(i, m, found["seconds"], found) for (i, m), found in timings.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=600, help="uncompressed MB (>= 500)")
    parser.add_argument(
        "--layer",
        choices=("generated", "debian"),
        default="generated",
        help="the generated layer, or first_scan.py's Debian base layer",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each side; best is kept")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="regscan-bench-") as tmp:
        layer = Path(tmp) / "layer.tar.gz"
        if args.layer == "debian":
            print("building the Debian base layer of bench/first_scan.py ...", flush=True)
            expanded = debian(layer)
        else:
            print(f"generating a {args.size_mb} MB layer ...", flush=True)
            expanded = generate(layer, args.size_mb)
        baseline, timings = measure(layer, sha256_of(layer), expanded, args.runs)
        report(layer, expanded, baseline, timings, args.runs)
    return 0


def report(
    layer: Path,
    expanded: int,
    baseline: float,
    timings: list[tuple[str, str, float, dict]],
    runs: int,
) -> None:
    mb = 1_000_000
    print(f"layer: {layer.stat().st_size / mb:.0f} MB gzip, {expanded / mb:.0f} MB uncompressed")
    print(f"{'tool':<44}{'seconds':>9}{'MB/s':>7}{'ratio':>7}{'inflate CPU s':>15}")
    name = "gzip -dc | tar -t (baseline)"
    print(f"{name:<44}{baseline:>9.2f}{expanded / mb / baseline:>7.0f}{1:>7.2f}")
    for inflater, mode, seconds, found in timings:
        name = f"regscan analyse_layer, {inflater}, {mode}"
        print(
            f"{name:<44}{seconds:>9.2f}{expanded / mb / seconds:>7.0f}"
            f"{seconds / baseline:>7.2f}{found['inflate_cpu']:>15.3f}"
        )
    inflater, mode, ours, found = timings[0]
    print(
        f"ratio: regscan ({inflater}, {mode}, the default) / baseline = {ours / baseline:.2f} "
        f"(best of {runs} runs each)"
    )
    idle, peak = found["idle_rss_kib"] / 1024, found["peak_rss_kib"] / 1024
    print(
        f"analysing process peak RSS: {peak:.0f} MiB ({idle:.0f} MiB before reading the "
        f"layer, so {peak - idle:.0f} MiB for {expanded / mb:.0f} MB of layer)"
    )
    print(f"packages found: {found['packages']}; bytes read by regscan: {found['expanded']}")
    print("inflate CPU s: the inflater alone over the layer, CPU seconds of its thread")
    print(
        f"machine: {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}"
    )
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
