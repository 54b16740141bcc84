"""Layer analysis speed and memory on one large generated layer.

Generates a gzip layer of at least 500 MB uncompressed (package databases among
bulk files), then times, on the same file in the same run:

  baseline   gzip -dc layer.tar.gz | tar -t > /dev/null
  regscan    scanner.inventory.analysis.analyse_layer with every cataloger, in a child process

and prints the ratio, plus the analysing process's peak RSS against the RSS of the
same process before it reads anything.

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


def child(path: str, digest: str) -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=600, help="uncompressed MB (>= 500)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each side; best is kept")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DIGEST"), help=argparse.SUPPRESS)
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
        ours, out = best(args.runs, [sys.executable, __file__, "--child", str(layer), digest])
        found = json.loads(out)
        # Both sides must have read the whole layer for the times to compare.
        if found["expanded"] < expanded:
            raise SystemExit(f"analysis read {found['expanded']} of {expanded} bytes")
        report(layer, expanded, baseline, ours, found, args.runs)
    return 0


def report(layer: Path, expanded: int, baseline: float, ours: float, found: dict, runs: int):
    mb = 1_000_000
    print(f"layer: {layer.stat().st_size / mb:.0f} MB gzip, {expanded / mb:.0f} MB uncompressed")
    print(f"{'tool':<44}{'seconds':>9}{'MB/s':>9}")
    print(f"{'gzip -dc | tar -t (baseline)':<44}{baseline:>9.2f}{expanded / mb / baseline:>9.0f}")
    name = "regscan analyse_layer (all catalogers)"
    print(f"{name:<44}{ours:>9.2f}{expanded / mb / ours:>9.0f}")
    print(f"ratio: regscan / baseline = {ours / baseline:.2f} (best of {runs} runs each)")
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
