"""Layer analysis speed and memory on one large generated layer.

Generates a gzip layer of at least 500 MB uncompressed (package databases among
bulk files), then times, on the same file in the same run:

  baseline   gzip -dc layer.tar.gz | tar -t > /dev/null
  regscan    scanner.inventory.analysis.analyse_layer with every cataloger, in a child
             process, once per way of inflating: each zlib implementation installed
             (isal, zlib-ng, the standard library's), with the read-ahead thread and
             without it

and prints each one's ratio to the baseline, plus the peak RSS of the process analysing
the default way against its RSS before it reads anything.

    .venv/bin/python bench/analyse.py [--size-mb 600] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import random
import resource
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
    """Run in a child process: analyse the layer, print what was found and the RSS."""
    from scanner.inventory.analysis import analyse_layer
    from scanner.inventory.catalogers import ALL
    from scanner.inventory.results import Limits

    idle_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
    found = sum(len(p) for p in analysis.packages.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "packages": found,
                "expanded": analysis.expanded_bytes,
                "idle_rss_kib": idle_rss,
                "peak_rss_kib": peak,
            }
        )
    )


def best(runs: int, argv: list[str]) -> tuple[float, str]:
    results = [timed(argv) for _ in range(runs)]
    return min(seconds for seconds, _out in results), results[-1][1]


def ways() -> list[tuple[str, bool]]:
    """(inflater, read-ahead) pairs to time: every inflater installed, with and without
    the read-ahead thread, the default first."""
    from scanner.inventory.streams import INFLATER, INFLATERS

    names = [INFLATER, *(name for name in INFLATERS if name != INFLATER)]
    return [(name, read_ahead) for name in names for read_ahead in (True, False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=600, help="uncompressed MB (>= 500)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side; best is kept")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="regscan-bench-") as tmp:
        layer = Path(tmp) / "layer.tar.gz"
        print(f"generating a {args.size_mb} MB layer ...", flush=True)
        expanded = generate(layer, args.size_mb)
        digest = sha256_of(layer)
        baseline, _ = best(
            args.runs, ["bash", "-o", "pipefail", "-c", f"gzip -dc {layer} | tar -t > /dev/null"]
        )
        timings = []
        for inflater, read_ahead in ways():
            mode = "read-ahead" if read_ahead else "inline"
            argv = [sys.executable, __file__, "--child", str(layer), digest, inflater, mode]
            seconds, out = best(args.runs, argv)
            found = json.loads(out)
            # Every way must have read the whole layer for the times to compare.
            if found["expanded"] < expanded:
                raise SystemExit(f"{inflater} read {found['expanded']} of {expanded} bytes")
            timings.append((inflater, mode, seconds, found))
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
    print(f"{'tool':<52}{'seconds':>9}{'MB/s':>7}{'ratio':>7}")
    name = "gzip -dc | tar -t (baseline)"
    print(f"{name:<52}{baseline:>9.2f}{expanded / mb / baseline:>7.0f}{1:>7.2f}")
    for inflater, mode, seconds, _found in timings:
        name = f"regscan analyse_layer, {inflater}, {mode}"
        print(f"{name:<52}{seconds:>9.2f}{expanded / mb / seconds:>7.0f}{seconds / baseline:>7.2f}")
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
    print(
        f"machine: {os.cpu_count()} cpus, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.machine()}"
    )


if __name__ == "__main__":
    sys.exit(main())
