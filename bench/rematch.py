"""Re-matching stored inventories after a data update, against re-scanning from a registry.

When the OSV data changes, every stored image is matched again from the inventory its
scan stored, without asking a registry anything. This compares, in the same run:

  A  re-scan    images pushed to a private docker-registry (a shared Debian 12 base
                layer, then a layer of their own: a dpkg status of ~60 packages and 5
                Python packages), each scanned in this process as a worker scans it:
                a RegistryClient, ``resolve_image``, ``analyse_image`` with every
                cataloger. The layer cache is an in-memory dict of the analyses' JSON,
                warm for the shared base layer (as in production, where the base was
                analysed long before) and cold for each image's own layer. Nothing is
                stored and nothing is matched, so this is the cheapest a re-scan gets.
                Run before B (A1) and after C (A2); the ratio takes the faster.
  B  first match  10,000 stored images (100-300 packages each, drawn from a package
                pool, Debian 12) matched against 5,000 OSV records imported through the
                real import path (a zip written like osv.dev's all.zip).
  C  re-match   the same images after a data update of 250 records (re-issued, new or
                withdrawn) was imported: only the package versions the update names are
                matched again, and the counts of the images holding them follow.
  D  small update  the same after an update re-issuing 5 records, drawn as the others.
  E  full re-match  every image linked and every package version matched again, as if
                never matched: what C and D would cost if re-matching did not follow
                the changes.

Findings are stored once per package version (models/package_versions.py); for C and D the
rows written (finding rows replaced, package versions and images updated) are counted,
and the database's size on disk per image is measured after B.

B to E call ``worker.rematch.rematch_batch`` in the Celery task's batches until a batch
says nothing is left, in this process, so Celery's overhead is left out; ``--celery`` runs
them through a real worker on a private Redis instead. The registry stays up all along,
and its access log counts the requests it served in each phase.

    .venv/bin/python bench/rematch.py [--images 10000] [--scan-images 200]
        [--records 5000] [--database sqlite|postgresql] [--celery]

With the defaults a run takes about 10 minutes on two cores, most of it B, E and storing
the images.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # `testbed`, `worker` and `models` are imported from the checkout, wherever we run from.
    sys.path.insert(0, str(REPO_ROOT))

from redis import Redis  # noqa: E402
from sqlalchemy import delete, func, insert, make_url, select, text, update  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from bench.common import (  # noqa: E402
    BenchError,
    database_facts,
    open_database,
    regscan_process,
    run_main,
)
from core import keys  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.tasks import Publisher, make_celery  # noqa: E402
from models import (  # noqa: E402
    Image,
    findings,
    package_versions,
    vuln_records,
)
from models.db import make_engine, make_sessionmaker, transaction  # noqa: E402
from models.images import ImagePackage, matched_before  # noqa: E402
from models.package_versions import PackageFinding, PackageVersion  # noqa: E402
from scanner.inventory.analysis import analyse_image  # noqa: E402
from scanner.inventory.catalogers import ALL as CATALOGERS  # noqa: E402
from scanner.inventory.packages import ANALYSER_VERSION, NODEJS, OS_PACKAGE, PYTHON, Package  # noqa: E402
from scanner.inventory.results import Inventory, LayerAnalysis, Limits  # noqa: E402
from scanner.registry.auth import RegistryAuth  # noqa: E402
from scanner.registry.client import RegistryClient  # noqa: E402
from scanner.registry.images import resolve_image  # noqa: E402
from scanner.vulns.versions import compare  # noqa: E402
from testbed.images import DOCKER_LAYER_GZIP, DOCKER_MANIFEST, Pusher, make_layer  # noqa: E402
from testbed.services import (  # noqa: E402
    REGISTRY_BINARY,
    RedisServer,
    RegistryServer,
)
from worker.rematch import current_findings, rematch_batch  # noqa: E402
from worker.vuln_import import import_location  # noqa: E402

DEFAULT_IMAGES = 10_000
DEFAULT_SCAN_IMAGES = 200
DEFAULT_RECORDS = 5_000
SEED = 1
# The package pool. Its order is popularity: the first sources are in every image (libc,
# coreutils, ...), and the most common packages are also those most records name.
DEBIAN_SOURCES = 3_000
PYTHON_PACKAGES = 1_500
NPM_PACKAGES = 1_500
ESSENTIAL_SOURCES = 40
POPULARITY_EXPONENT = 0.6  # weight of the package of rank r: 1 / (r + 1) ** exponent
SCAN_DPKG_PACKAGES = 50
SCAN_PYTHON_PACKAGES = 5
SCAN_REPOSITORIES = 10
UPDATE_NEWER = 0.03  # share of the records a data update re-issues (fix moved, withdrawn)
UPDATE_NEW = 0.02  # share it adds
SMALL_UPDATE = 5  # records a small update re-issues (phase D), drawn as the others are
VERIFY_SAMPLE = 200  # images matched afresh at the end to check what re-matching stored
STORED_CHUNK = 500  # images generated and inserted per transaction

REGISTRY_HOST = "registry.bench.invalid"  # where the stored images were once scanned from
OS_RELEASE = (
    b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    b'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
)
PRETTY_NAME = "Debian GNU/Linux 12 (bookworm)"
CVSS_V3 = (
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
    "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:N",
    "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:L/A:N",
    "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:L/I:N/A:N",
)
WORDS = (
    "buffer", "overflow", "in", "the", "parser", "allows", "remote", "attackers", "to", "cause",
    "a", "denial", "of", "service", "via", "crafted", "input", "use", "after", "free", "heap",
    "out", "bounds", "read", "write", "integer", "underflow", "when", "handling", "archives",
    "certificates", "headers", "requests", "may", "lead", "code", "execution",
)  # fmt: skip
FIRST_IMPORT = datetime(2025, 1, 1, tzinfo=UTC)
UPDATE_IMPORT = datetime(2025, 2, 1, tzinfo=UTC)
SMALL_IMPORT = datetime(2025, 2, 2, tzinfo=UTC)


# -- the generated world: a package pool, stored inventories, OSV records -----------------


@dataclass(frozen=True)
class PoolPackage:
    ecosystem: str  # "Debian", "PyPI" or "npm": the family of OSV ecosystems naming it
    name: str  # the Debian source name, or the language package's name
    versions: tuple[str, ...]  # what images have, ascending in the ecosystem's ordering
    historic: str  # older than every one of them: where long-fixed vulnerabilities were fixed
    binaries: tuple[str, ...] = ()  # Debian: the binary packages built from the source


@dataclass
class Pool:
    debian: list[PoolPackage]
    python: list[PoolPackage]
    npm: list[PoolPackage]
    weights: dict[str, list[float]] = field(default_factory=dict)  # cumulative, by ecosystem

    def packages(self, ecosystem: str) -> list[PoolPackage]:
        return {"Debian": self.debian, "PyPI": self.python, "npm": self.npm}[ecosystem]

    def draw(self, rng: random.Random, ecosystem: str) -> PoolPackage:
        """A package, the popular ones more often."""
        packages = self.packages(ecosystem)
        return rng.choices(packages, cum_weights=self.weights[ecosystem])[0]


def make_pool(rng: random.Random) -> Pool:
    debian = [_debian_source(rng, i) for i in range(DEBIAN_SOURCES)]
    python = [_language(rng, "PyPI", f"pylib-{i:04d}", _pep440) for i in range(PYTHON_PACKAGES)]
    npm = [_language(rng, "npm", f"jsmod-{i:04d}", _semver) for i in range(NPM_PACKAGES)]
    pool = Pool(debian, python, npm)
    for ecosystem in ("Debian", "PyPI", "npm"):
        pool.weights[ecosystem] = _cumulative(len(pool.packages(ecosystem)))
    _check_ascending(pool)
    return pool


def _cumulative(n: int) -> list[float]:
    total, found = 0.0, []
    for rank in range(n):
        total += 1 / (rank + 1) ** POPULARITY_EXPONENT
        found.append(total)
    return found


def _debian_source(rng: random.Random, i: int) -> PoolPackage:
    name = f"src{i:04d}"
    n = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    binaries = (f"lib{name}-{j}" if j else name for j in range(n))
    epoch = "1:" if rng.random() < 0.15 else ""
    major, minor, patch = rng.randint(0, 9), rng.randint(0, 30), rng.randint(0, 20)
    now, later = f"{epoch}{major}.{minor}.{patch}", f"{epoch}{major}.{minor}.{patch + 1}"
    # A release's life: uploads, security updates (+deb12uN), a backported new upstream.
    versions = (
        f"{now}-1",
        f"{now}-2",
        f"{now}-2+deb12u1",
        f"{now}-2+deb12u2",
        f"{later}-1~deb12u1",
        f"{later}-1",
    )
    return PoolPackage("Debian", name, versions, f"{now}~rc1-1", tuple(binaries))


def _pep440(major: int, minor: int) -> tuple[str, ...]:
    m, n = f"{major}.{minor}", f"{major}.{minor + 1}"
    return (f"{m}.0rc1", f"{m}.0", f"{m}.1", f"{m}.2", f"{n}.0rc1", f"{n}.0", f"{major + 1}.0.0")


def _semver(major: int, minor: int) -> tuple[str, ...]:
    m, n = f"{major}.{minor}", f"{major}.{minor + 1}"
    return (
        f"{m}.0-rc.1",
        f"{m}.0",
        f"{m}.1",
        f"{m}.2",
        f"{n}.0-beta.1",
        f"{n}.0",
        f"{major + 1}.0.0",
    )


def _language(
    rng: random.Random, ecosystem: str, name: str, scheme: Callable[[int, int], tuple[str, ...]]
) -> PoolPackage:
    historic, *versions = scheme(rng.randint(0, 5), rng.randint(0, 20))
    return PoolPackage(ecosystem, name, tuple(versions), historic)


def _check_ascending(pool: Pool) -> None:
    # The ranges below pick fixes by position, which is only right if positions are order.
    schemes = {"Debian": "dpkg", "PyPI": "pep440", "npm": "semver"}
    for p in (*pool.debian, *pool.python, *pool.npm):
        scheme = schemes[p.ecosystem]
        ordered = (p.historic, *p.versions)
        for a, b in pairwise(ordered):
            if compare(scheme, a, b) >= 0:
                raise BenchError(f"generated versions of {p.name} out of order: {a} >= {b}")


# One stored inventory: what a scan would have found in an image.
Installed = list[tuple[PoolPackage, str]]


def pick_installed(rng: random.Random, pool: Pool, os_count: int, language_count: int) -> Installed:
    """Debian sources until ``os_count`` binaries (the essential ones first), then
    language packages, each at one of its versions."""
    chosen: dict[str, PoolPackage] = {p.name: p for p in pool.debian[:ESSENTIAL_SOURCES]}
    binaries = sum(len(p.binaries) for p in chosen.values())
    while binaries < os_count:
        p = pool.draw(rng, "Debian")
        if p.name not in chosen:
            chosen[p.name] = p
            binaries += len(p.binaries)
    python = language_count * 2 // 3
    for ecosystem, count in (("PyPI", python), ("npm", language_count - python)):
        picked: dict[str, PoolPackage] = {}
        while len(picked) < count:
            p = pool.draw(rng, ecosystem)
            picked.setdefault(p.name, p)
        chosen.update(picked)
    return [(p, rng.choice(p.versions)) for p in chosen.values()]


def inventory_packages(installed: Installed, layer: str) -> list[Package]:
    """The packages a scan reports for ``installed``, as the catalogers name them."""
    found = []
    for p, version in installed:
        if p.ecosystem == "Debian":
            for binary in p.binaries:
                found.append(
                    Package(OS_PACKAGE, binary, version, p.name, version, "var/lib/dpkg/status")
                )
        elif p.ecosystem == "PyPI":
            path = f"usr/lib/python3/dist-packages/{p.name}-{version}.dist-info/METADATA"
            found.append(Package(PYTHON, p.name, version, path=path))
        else:
            found.append(Package(NODEJS, p.name, version, path=f"app/node_modules/{p.name}"))
    return [replace(p, layer=layer) for p in found]


def stored_image(rng: random.Random, pool: Pool, number: int) -> tuple[dict[str, Any], Installed]:
    """An ``images`` row as a scan leaves it (inventory stored, not matched yet)."""
    total = rng.randint(100, 300)
    language = round(total * rng.uniform(0.05, 0.3))
    installed = pick_installed(rng, pool, total - language, language)
    base, own = _digest(f"base-{number % 40}"), _digest(f"layer-{number}")
    packages = inventory_packages(installed, own)
    row = {
        "id": number + 1,
        "registry_host": REGISTRY_HOST,
        "repository": f"team{number % 50:02d}/app{number // 50:03d}",
        "digest": _digest(f"image-{number}"),
        "media_type": DOCKER_MANIFEST,
        "config_digest": _digest(f"config-{number}"),
        "platform": "linux/amd64",
        "os": "linux",
        "architecture": "amd64",
        "size": 80_000_000,
        "layers": [
            {"digest": base, "size": 30_000_000, "mediaType": DOCKER_LAYER_GZIP},
            {"digest": own, "size": 50_000_000, "mediaType": DOCKER_LAYER_GZIP},
        ],
        "os_distro": "debian",
        "os_distro_version": "12",
        "os_distro_release": "bookworm",
        "distro": PRETTY_NAME,
        "packages": [p.to_json() for p in packages],
        "analyser_version": ANALYSER_VERSION,
    }
    return row, installed


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class RecordMaker:
    """OSV records over the pool: Debian (per release and for every release), PyPI (with
    PYSEC duplicates) and npm, with Debian advisories aliasing several CVEs."""

    rng: random.Random
    pool: Pool
    published: datetime = FIRST_IMPORT
    issued: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by package
    sequence: int = 0

    def make(self, n: int) -> list[dict[str, Any]]:
        return [self.one() for _ in range(n)]

    def one(self) -> dict[str, Any]:
        self.sequence += 1
        roll = self.rng.random()
        if roll < 0.65:
            return self._debian()
        if roll < 0.85:
            return self._language("PyPI")
        return self._language("npm")

    def _debian(self) -> dict[str, Any]:
        p = self.pool.draw(self.rng, "Debian")
        earlier = self.issued.get(p.name, [])
        if earlier and self.rng.random() < 0.1:
            # A security advisory for CVEs already recorded, fixed in the same upload.
            cves = self.rng.sample(earlier, min(len(earlier), self.rng.randint(1, 3)))
            aliases = sorted({c["aliases"][0] for c in cves})
            rid = f"DSA-{5000 + self.sequence}-1"
            return self._record(rid, aliases, [cves[0]["affected"][0]], severity=False)
        ecosystem = "Debian" if self.rng.random() < 0.15 else "Debian:12"
        cve = self._cve()
        record = self._record(f"DEBIAN-{cve}", [cve], [self._affected(p, ecosystem)])
        self.issued.setdefault(p.name, []).append(record)
        return record

    def _language(self, ecosystem: str) -> dict[str, Any]:
        p = self.pool.draw(self.rng, ecosystem)
        cve = self._cve()
        if ecosystem == "PyPI" and self.rng.random() < 0.2:
            return self._record(f"PYSEC-{cve[4:]}", [cve], [self._affected(p, ecosystem)])
        return self._record(self._ghsa(), [cve], [self._affected(p, ecosystem)])

    def _record(
        self, rid: str, aliases: list[str], affected: list[dict[str, Any]], severity: bool = True
    ) -> dict[str, Any]:
        published = self.published - timedelta(days=self.rng.randint(0, 1500))
        record: dict[str, Any] = {
            "schema_version": "1.6.0",
            "id": rid,
            "modified": _rfc3339(self.published - timedelta(hours=self.rng.randint(1, 500))),
            "published": _rfc3339(published),
            "aliases": aliases,
            "summary": " ".join(self.rng.choices(WORDS, k=8)),
            "details": " ".join(self.rng.choices(WORDS, k=self.rng.randint(40, 120))),
            "affected": affected,
            "references": [
                {"type": "ADVISORY", "url": f"https://nvd.nist.gov/vuln/detail/{aliases[0]}"},
                {"type": "WEB", "url": f"https://security.example/{rid}"},
                {"type": "FIX", "url": f"https://git.example/commit/{_digest(rid)[7:47]}"},
            ],
        }
        roll = self.rng.random()
        if severity and roll < 0.6:
            record["severity"] = [{"type": "CVSS_V3", "score": self.rng.choice(CVSS_V3)}]
        elif severity and roll < 0.8:
            rating = self.rng.choice(("LOW", "MODERATE", "HIGH", "CRITICAL"))
            record["database_specific"] = {"severity": rating}
        if self.rng.random() < 0.01:
            record["withdrawn"] = record["modified"]
        return record

    def _affected(self, p: PoolPackage, ecosystem: str) -> dict[str, Any]:
        events, affected = self._events(p)
        kind = "SEMVER" if ecosystem == "npm" else "ECOSYSTEM"
        entry: dict[str, Any] = {
            "package": {"ecosystem": ecosystem, "name": p.name},
            "ranges": [{"type": kind, "events": events}],
        }
        if ecosystem == "PyPI" and affected:  # PyPI records list the affected versions too
            entry["versions"] = affected
        return entry

    def _events(self, p: PoolPackage) -> tuple[list[dict[str, str]], list[str]]:
        """A range over ``p``'s versions, and which of them it makes affected. Most of
        a release's records were fixed before any version images still have."""
        v, roll = p.versions, self.rng.random()
        if roll < 0.5:
            return [{"introduced": "0"}, {"fixed": p.historic}], []
        if roll < 0.65:  # not fixed (yet): Debian's unimportant and no-DSA ones, mostly
            return [{"introduced": "0"}], list(v)
        if roll < 0.9:  # fixed by an update within the release
            fix = self.rng.randint(1, len(v) - 1)
            return [{"introduced": "0"}, {"fixed": v[fix]}], list(v[:fix])
        if roll < 0.95:  # introduced by a later version
            first = self.rng.randint(1, len(v) - 2)
            fix = self.rng.randint(first + 1, len(v) - 1)
            return [{"introduced": v[first]}, {"fixed": v[fix]}], list(v[first:fix])
        last = self.rng.randint(0, len(v) - 2)
        return [{"introduced": "0"}, {"last_affected": v[last]}], list(v[: last + 1])

    def updated(self, record: dict[str, Any], when: datetime) -> dict[str, Any]:
        """``record`` re-issued: the fix moved to another version, or withdrawn."""
        new = json.loads(json.dumps(record))
        new["modified"] = _rfc3339(when)
        if self.rng.random() < 0.1:
            new["withdrawn"] = new["modified"]
            return new
        affected = new["affected"][0]
        ecosystem, name = affected["package"]["ecosystem"], affected["package"]["name"]
        family = ecosystem.split(":", 1)[0]
        [p] = [x for x in self.pool.packages(family) if x.name == name]
        new["affected"] = [self._affected(p, ecosystem)]
        return new

    def _cve(self) -> str:
        return f"CVE-{2020 + self.sequence % 6}-{100000 + self.sequence}"

    def _ghsa(self) -> str:
        letters = "23456789cfghjmpqrvwx"
        groups = ("".join(self.rng.choices(letters, k=4)) for _ in range(3))
        return "GHSA-" + "-".join(groups)


def _rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def update_records(maker: RecordMaker, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A day's change to the data: some records re-issued, some new."""
    reissued = maker.rng.sample(records, round(len(records) * UPDATE_NEWER))
    changed = [maker.updated(r, UPDATE_IMPORT) for r in reissued]
    maker.published = UPDATE_IMPORT
    return changed + maker.make(round(len(records) * UPDATE_NEW))


def write_export(path: Path, records: list[dict[str, Any]]) -> Path:
    """An osv.dev-style all.zip: one JSON file per record."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record, indent=2))
    return path


def records_naming(records: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """How many records name each (ecosystem family, package): the candidates of a match."""
    found: Counter[tuple[str, str]] = Counter()
    for record in records:
        found.update(
            {
                (a["package"]["ecosystem"].split(":")[0], a["package"]["name"])
                for a in record["affected"]
            }
        )
    return found


# -- phase A: scanning images from a registry ----------------------------------------------


@dataclass
class PushedImage:
    repository: str
    tag: str
    packages: int  # how many packages its inventory must hold


def push_images(pusher: Pusher, rng: random.Random, pool: Pool, n: int) -> list[PushedImage]:
    """``n`` images on one shared base layer, each with a layer of its own."""
    base = make_layer({"etc/os-release": OS_RELEASE, "etc/debian_version": b"12.5\n"})
    pushed = []
    for i in range(n):
        installed = pick_installed(rng, pool, SCAN_DPKG_PACKAGES, 0)
        python = _distinct(rng, pool, "PyPI", SCAN_PYTHON_PACKAGES)
        installed += [(p, rng.choice(p.versions)) for p in python]
        repository, tag = f"bench/app{i % SCAN_REPOSITORIES:02d}", f"v{i}"
        layer = make_layer(own_layer_files(installed, f"{repository}:{tag}"))
        pusher.push_image(repository, tag, [base, layer])
        pushed.append(PushedImage(repository, tag, len(inventory_packages(installed, ""))))
    return pushed


def _distinct(rng: random.Random, pool: Pool, ecosystem: str, n: int) -> list[PoolPackage]:
    found: dict[str, PoolPackage] = {}
    while len(found) < n:
        p = pool.draw(rng, ecosystem)
        found.setdefault(p.name, p)
    return list(found.values())


def own_layer_files(installed: Installed, name: str) -> dict[str, bytes]:
    files = {"var/lib/dpkg/status": dpkg_status(installed), "app/NAME": name.encode()}
    for p, version in installed:
        if p.ecosystem == "PyPI":
            base = f"usr/lib/python3/dist-packages/{p.name}-{version}.dist-info"
            files[f"{base}/METADATA"] = (
                f"Metadata-Version: 2.1\nName: {p.name}\nVersion: {version}\n"
                f"Summary: {p.name} for the benchmark\n"
            ).encode()
    return files


def dpkg_status(installed: Installed) -> bytes:
    """A status file with the fields a real one has, so parsing costs what it costs."""
    out = io.StringIO()
    for p, version in installed:
        if p.ecosystem != "Debian":
            continue
        for binary in p.binaries:
            out.write(f"Package: {binary}\nStatus: install ok installed\nPriority: optional\n")
            out.write("Section: libs\nInstalled-Size: 1234\n")
            out.write("Maintainer: Debian Developers <debian-devel@lists.debian.org>\n")
            out.write("Architecture: amd64\nMulti-Arch: same\n")
            if binary != p.name:
                out.write(f"Source: {p.name}\n")
            out.write(f"Version: {version}\nDepends: libc6 (>= 2.34), zlib1g (>= 1:1.2.0)\n")
            out.write(f"Description: {binary} for the benchmark\n a longer description.\n\n")
    return out.getvalue().encode()


class MemoryLayerCache:
    """Layer analyses kept as the JSON the layer cache stores, so a hit pays for
    decoding as a database hit does (but not for the query)."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def get(self, digest: str) -> LayerAnalysis | None:
        data = self.stored.get(digest)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        return LayerAnalysis.from_json(json.loads(data))

    def put(self, digest: str, _media_type: str, _size: int, analysis: LayerAnalysis) -> None:
        self.stored[digest] = json.dumps(analysis.to_json())


def scan(
    settings: Settings,
    base_url: str,
    auth: RegistryAuth,
    image: PushedImage,
    cache: MemoryLayerCache,
) -> int:
    """One image scanned as ``worker.images`` scans it: a client per scan (with the
    process-wide auth), the tag resolved, the layers analysed; the packages found."""
    client = RegistryClient(
        base_url,
        connect_timeout=settings.registry_connect_timeout,
        read_timeout=settings.registry_read_timeout,
        retries=settings.registry_retries,
        backoff=settings.registry_backoff,
        backoff_max=settings.registry_backoff_max,
        auth=auth,
    )
    limits = Limits(max_expanded_bytes=settings.max_layer_expanded_bytes)
    with client:
        found = 0
        for platform_image in resolve_image(client, image.repository, image.tag):
            inventory: Inventory = analyse_image(
                client,
                image.repository,
                platform_image.layers,
                catalogers=CATALOGERS,
                cache_get=cache.get,
                cache_put=cache.put,
                limits=limits,
            )
            if (inventory.os.distro, inventory.os.version) != ("debian", "12"):
                raise BenchError(f"{image.repository}:{image.tag}: OS {inventory.os}")
            found += len(inventory.packages)
    return found


@dataclass
class Clock:
    """Wall and this process's CPU seconds of a block. CPU well under wall in a phase
    that runs in this process means it waited: for a server, or for a busy machine."""

    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def clocked() -> Iterator[Clock]:
    clock = Clock()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - wall
        clock.cpu = time.process_time() - cpu


@dataclass
class Phase:
    name: str
    images: int
    clock: Clock
    registry_requests: int  # served by the registry meanwhile, from its access log
    matched: int | None = None  # package versions matched again (None: not known)
    rows_written: int | None = None  # findings, package versions and images written

    @property
    def per_second(self) -> float:
        return self.images / self.clock.seconds if self.clock.seconds else 0.0


def rescan_phase(
    name: str, settings: Settings, registry: RegistryServer, pushed: list[PushedImage]
) -> Phase:
    cache = MemoryLayerCache()
    # One per registry for the whole process, as worker.runtime.RegistryAuths keeps it.
    auth = RegistryAuth(
        registry.url, timeout=(settings.registry_connect_timeout, settings.registry_read_timeout)
    )
    # The shared base layer is analysed before the clock starts: production's layer
    # cache has seen it long before, while each image's own layer is new.
    scan(settings, registry.url, auth, pushed[0], cache)
    timed = pushed[1:]
    with requests_served(registry) as served, clocked() as clock:
        found = [scan(settings, registry.url, auth, image, cache) for image in timed]
    wrong = [(i, n) for i, n in zip(timed, found, strict=True) if n != i.packages]
    if wrong:
        image, n = wrong[0]
        raise BenchError(f"{image.repository}:{image.tag}: {n} packages, {image.packages} pushed")
    # Every timed image: its base layer from the cache, its own layer downloaded.
    if (cache.hits, cache.misses - 2) != (len(timed), len(timed)):
        raise BenchError(f"layer cache: {cache.hits} hits, {cache.misses} misses")
    return Phase(name, len(timed), clock, served())


_ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]*\] "[A-Z]+ ', re.MULTILINE)


@contextlib.contextmanager
def requests_served(registry: RegistryServer) -> Iterator[Callable[[], int]]:
    """Requests the registry serves in the block, whoever sends them (a worker too),
    counted in its access log, which it writes whatever the log level."""
    before = len(_ACCESS_LINE.findall(registry.read_log()))
    counted: list[int] = []
    yield lambda: counted[0]
    time.sleep(0.2)  # the registry writes its line after the response
    counted.append(len(_ACCESS_LINE.findall(registry.read_log())) - before)


# -- phases B to E: matching stored inventories ----------------------------------------------


@dataclass
class Stored:
    images: int = 0
    packages: int = 0
    candidates: list[int] = field(default_factory=list)  # records naming each image's packages


def store_images(
    sessions: sessionmaker[Session], rng: random.Random, pool: Pool, n: int, naming: Counter
) -> Stored:
    """``n`` images with their inventories and per-package rows, as scans store them."""
    stored = Stored()
    for start in range(0, n, STORED_CHUNK):
        rows, package_rows = [], []
        for number in range(start, min(n, start + STORED_CHUNK)):
            row, installed = stored_image(rng, pool, number)
            rows.append(row)
            package_rows += [_package_row(row["id"], p) for p in row["packages"]]
            stored.candidates.append(sum(naming[p.ecosystem, p.name] for p, _ in installed))
        with transaction(sessions) as session:
            session.execute(insert(Image), rows)
            session.execute(insert(ImagePackage), package_rows)
        stored.images += len(rows)
        stored.packages += len(package_rows)
    return stored


def _package_row(image_id: int, p: dict[str, Any]) -> dict[str, Any]:
    # The rows set_image_packages writes for a scanned image.
    keep = {"image_id": image_id, "type": p["type"], "name": p["name"], "version": p["version"]}
    return {**keep, "source_name": p.get("source_name") or ""}


def import_export(sessions: sessionmaker[Session], path: Path) -> tuple[int, float]:
    """Import through the real path; the generation it bumped to, and the seconds."""
    started = time.perf_counter()
    report = import_location(sessions, str(path), conditional=False)
    seconds = time.perf_counter() - started
    if report.invalid or report.generation is None:
        raise BenchError(f"import of {path}: {len(report.invalid)} invalid, nothing changed?")
    return report.generation, seconds


# Runs the re-match chain until nothing is behind the data: the package versions it
# matched again and the rows it wrote (None when it cannot tell).
Matcher = Callable[[], tuple[int | None, int | None]]


def in_process_matcher(sessions: sessionmaker[Session], batch: int, versions: int) -> Matcher:
    """The chain the Celery task runs, without Celery: batches until one says nothing is
    left, just as ``worker.rematch.rematch_next`` stops publishing the next one."""

    def run() -> tuple[int | None, int | None]:
        matched = written = 0
        while True:
            counts = rematch_batch(sessions, batch, versions)
            matched += counts.versions_matched
            # Finding rows replaced, package versions matched, images linked or counted.
            written += counts.findings_written + counts.versions_matched
            written += counts.images_changed + counts.linked
            if not counts.more:
                return matched, written

    return run


def celery_matcher(sessions: sessionmaker[Session], settings: Settings) -> Matcher:
    """One ``regscan.rematch`` message to a real worker; waits until nothing is due."""
    publisher = Publisher(make_celery(settings))

    def run() -> tuple[int | None, int | None]:
        publisher.rematch()
        while True:
            time.sleep(0.05)
            with sessions() as session:
                generation = vuln_records.current_generation(session)
                caught_up = vuln_records.findings_generation(session)
                if not findings.any_due(session, generation, caught_up):
                    return None, None  # the worker logs how many it matched again

    return run


def match_phase(
    name: str, matcher: Matcher, registry: RegistryServer, sessions: sessionmaker[Session]
) -> Phase:
    """``images``: those behind the data when the phase starts, brought up to it."""
    with sessions() as session:
        generation = vuln_records.current_generation(session)
        caught_up = vuln_records.findings_generation(session)
        behind = _count(session, Image.id, _behind(generation, caught_up))
    with requests_served(registry) as served, clocked() as clock:
        matched, written = matcher()
    return Phase(name, behind, clock, served(), matched, written)


@dataclass
class Outcome:
    generation: int
    behind: int  # images whose findings are not from the current generation
    findings: int  # of all images, as GET /registry shows them
    affected_images: int
    stored_findings: int  # rows: one per package version and vulnerability


def outcome(sessions: sessionmaker[Session]) -> Outcome:
    with sessions() as session:
        generation = vuln_records.current_generation(session)
        caught_up = vuln_records.findings_generation(session)
        return Outcome(
            generation,
            _count(session, Image.id, _behind(generation, caught_up)),
            int(session.scalar(select(func.sum(Image.vulns_total))) or 0),
            _count(session, Image.id, Image.vulns_total > 0),
            _count(session, PackageFinding.id),
        )


def _behind(generation: int, caught_up: int) -> Any:
    """Images whose findings are not current at ``generation``."""
    return matched_before(generation, caught_up)


def _count(session: Session, column: Any, *where: Any) -> int:
    return session.scalar(select(func.count(column)).where(*where)) or 0


# -- services -----------------------------------------------------------------------------


@contextlib.contextmanager
def rematch_worker(settings: Settings, batch: int, log_path: Path) -> Iterator[None]:
    """``regscan worker`` on the re-match queue alone, one thread, stopped afterwards."""
    env = {
        "REGSCAN_DATABASE_URL": settings.database_url,
        "REGSCAN_REDIS_URL": settings.redis_url,
        "REGSCAN_REMATCH_BATCH": str(batch),
        "REGSCAN_VULNDB_SOURCES": "",
    }
    args = ["worker", "--queues", "rematch", "--concurrency", "1"]
    args += ["--name", f"bench-rematch-{os.getpid()}@localhost"]
    with regscan_process(args, env, log_path) as proc:
        _wait_ready(proc, log_path)
        yield


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if b"ready." in log_path.read_bytes():
            return
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"the re-match worker did not come up:\n{tail}")


# -- reporting ------------------------------------------------------------------------------


def registry_version() -> str:
    out = subprocess.run(
        [REGISTRY_BINARY, "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "?"


def report(
    phases: list[Phase],
    rescan: Phase,
    rematch: Phase,
    small: Phase,
    full: Phase,
    facts: list[str],
) -> None:
    print(
        f"{'phase':<40}{'images':>7}{'seconds':>9}{'images/s':>10}{'cpu %':>7}"
        f"{'registry requests':>19}{'versions matched':>18}{'rows written':>14}"
    )
    for p in phases:
        matched = "-" if p.matched is None else str(p.matched)
        written = "-" if p.rows_written is None else str(p.rows_written)
        print(
            f"{p.name:<40}{p.images:>7}{p.clock.seconds:>9.2f}{p.per_second:>10.1f}"
            f"{p.clock.cpu_share * 100:>7.0f}{p.registry_requests:>19}{matched:>18}"
            f"{written:>14}"
        )
    ratio = rematch.per_second / rescan.per_second
    print(
        f"ratio: re-match (C) / re-scan (the faster A) = {ratio:.3f} images per second "
        f"({_inverse(ratio)})"
    )
    ratio = small.per_second / rescan.per_second
    print(
        f"ratio: re-match after a small update (D) / re-scan (the faster A) = {ratio:.3f} "
        f"images per second ({_inverse(ratio)})"
    )
    print(
        f"ratio: seconds of a full re-match (E) / of a re-match after the update (C) = "
        f"{full.clock.seconds / rematch.clock.seconds:.1f}, after the small update (D) = "
        f"{full.clock.seconds / small.clock.seconds:.1f}"
    )
    # A's scan stops at the inventory, but a real re-scan goes on to match it, as C does.
    both = 1 / (1 / rescan.per_second + 1 / rematch.per_second)
    print(
        f"derived: a re-scan that also matches, at A's + C's seconds per image: {both:.1f} "
        f"images/s; re-match / that = {rematch.per_second / both:.2f}"
    )
    for line in facts:
        print(line)


def _inverse(ratio: float) -> str:
    return f"1 : {1 / ratio:.1f}" if ratio < 1 else f"{ratio:.1f} : 1"


def machine_facts(load: float) -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    py = f"{platform.python_implementation()} {platform.python_version()}"
    return [
        f"machine: cpus {os.cpu_count()} (usable {affinity}), python {py}, "
        f"{platform.system()} {platform.machine()}, load before the run {load:.2f}"
    ]


def check(matches: list[Phase], outcomes: list[Outcome], images: int) -> list[str]:
    problems = []
    for phase, done in zip(matches, outcomes, strict=True):
        if phase.images != images:
            problems.append(f"{phase.name}: matched {phase.images} of {images} images")
        if done.behind:
            problems.append(
                f"{phase.name}: {done.behind} images not at generation {done.generation}"
            )
        if phase.registry_requests:
            problems.append(f"{phase.name}: the registry served {phase.registry_requests} requests")
        if not done.findings:
            problems.append(f"{phase.name}: no findings at all; the data set matches nothing")
    return problems


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    # Other work on the machine skews every figure; the 1-minute load says how busy it was.
    facts = machine_facts(os.getloadavg()[0])
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regscan-bench-")))
    rng, settings = random.Random(SEED), Settings()
    pool = make_pool(rng)
    batch = args.batch or settings.rematch_batch

    # Up all along, so that its access log shows it is not asked anything while matching.
    registry = stack.enter_context(RegistryServer())
    progress(f"pushing {args.scan_images + 1} images, then re-scanning them")
    pushed = push_images(Pusher(registry.url), rng, pool, args.scan_images + 1)
    before = done(rescan_phase("A1 re-scan from the registry", settings, registry, pushed))

    database_url = open_database(args.database, stack, tmp)
    sessions = open_sessions(database_url, settings, stack)
    setup = prepare(sessions, rng, pool, args, tmp)
    matcher = make_matcher(args.celery, stack, sessions, database_url, batch, tmp)
    progress(f"B: matching {args.images} stored images")
    first = done(match_phase("B first match of stored inventories", matcher, registry, sessions))
    first_outcome = outcome(sessions)
    size = database_size(args.database, database_url)
    _, setup.update_seconds = import_export(sessions, setup.update_zip)
    progress(f"C: re-matching {args.images} stored images")
    again = done(match_phase("C re-match after a data update", matcher, registry, sessions))
    again_outcome = outcome(sessions)
    _, setup.small_seconds = import_export(sessions, setup.small_zip)
    progress(f"D: re-matching {args.images} stored images after a small update")
    small = done(match_phase("D re-match after a small update", matcher, registry, sessions))
    small_outcome = outcome(sessions)
    forget_matches(sessions)
    progress(f"E: matching {args.images} stored images in full again")
    full = done(match_phase("E full re-match, every package", matcher, registry, sessions))
    full_outcome = outcome(sessions)
    # Measured again: load from elsewhere over the long matching phases shows as a gap.
    after = done(rescan_phase("A2 re-scan again, after E", settings, registry, pushed))

    rescan = max(before, after, key=lambda p: p.per_second)
    facts += _run_facts(args, database_url, batch, setup.stored, pushed)
    facts += [setup.describe(), _findings_fact(first_outcome, again_outcome)]
    # With the load before the run, says whether other work shared the machine meanwhile.
    facts.append(f"load after the run: {os.getloadavg()[0]:.2f}")
    facts.append(
        f"findings after E: {full_outcome.findings} (as after D: {small_outcome.findings})"
    )
    facts.append(
        f"database on disk after B: {size / 2**20:.1f} MiB, {size / args.images / 1024:.1f} KiB "
        f"per image; finding rows stored: {first_outcome.stored_findings} for "
        f"{first_outcome.findings} findings shown"
    )
    report([before, first, again, small, full, after], rescan, again, small, full, facts)
    problems = check(
        [first, again, small, full],
        [first_outcome, again_outcome, small_outcome, full_outcome],
        args.images,
    )
    if full_outcome.findings != small_outcome.findings:
        problems.append("E: a full re-match stored another number of findings than D left")
    problems += verify_sample(sessions, VERIFY_SAMPLE)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def forget_matches(sessions: sessionmaker[Session]) -> None:
    """Every image as if never matched and no package version known, so the next
    re-match links every image and matches every package version."""
    with transaction(sessions) as session:
        session.execute(delete(PackageVersion))  # their findings and links go with them
        zero = {f"vulns_{c}": 0 for c in ("critical", "high", "medium", "low", "total")}
        session.execute(update(Image).values(matched_generation=None, **zero))


def database_size(kind: str, url: str) -> int:
    """Bytes the database takes on disk (SQLite: the file, its log folded in)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if kind == "postgresql":
                return int(conn.scalar(text("SELECT pg_database_size(current_database())")))
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    finally:
        engine.dispose()
    path = Path(make_url(url).database or "")
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def verify_sample(sessions: sessionmaker[Session], n: int) -> list[str]:
    """Match ``n`` images spread over the fleet afresh and compare with what re-matching
    stored: partial re-matching must leave exactly the findings a full match gives.
    "Recent vulnerability" depends on the time of matching and is left out."""

    def comparable(findings: Iterable[dict[str, Any]]) -> list[str]:
        return sorted(
            json.dumps({k: v for k, v in f.items() if k != "riskFactors"}, sort_keys=True)
            for f in findings
        )

    problems = []
    progress(f"verifying {n} images against a fresh match")
    with sessions() as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        for image_id in ids[:: max(1, len(ids) // n)][:n]:
            image = session.get(Image, image_id)
            assert image is not None
            stored = [f.detail for f in findings.findings_of(session, [image_id])[image_id]]
            fresh = current_findings(session, image)
            if comparable(stored) != comparable(fresh):
                problems.append(f"image {image_id}: stored findings differ from a fresh match")
            counted = (image.vulns_critical, image.vulns_high, image.vulns_medium)
            counted += (image.vulns_low, image.vulns_total)
            if counted != package_versions.Counts.of(fresh).values():
                problems.append(f"image {image_id}: its counts differ from a fresh match")
    return problems


def progress(message: str) -> None:
    print(f"bench: {message} ...", file=sys.stderr, flush=True)


def done(phase: Phase) -> Phase:
    # Said at once: a long run cut short still leaves the phases it finished.
    print(
        f"bench: {phase.name}: {phase.images} images in {phase.clock.seconds:.2f} s "
        f"({phase.per_second:.1f}/s)",
        file=sys.stderr,
        flush=True,
    )
    return phase


def open_sessions(
    url: str, settings: Settings, stack: contextlib.ExitStack
) -> sessionmaker[Session]:
    # The engine a worker makes (worker.runtime.get_runtime).
    engine = make_engine(url, idle_transaction_seconds=settings.lock_ttl_seconds)
    stack.callback(engine.dispose)
    return make_sessionmaker(engine)


@dataclass
class Setup:
    """What the matching phases start from, and what preparing it took (not timed)."""

    stored: Stored
    records: int
    update_records: int
    update_zip: Path
    small_zip: Path
    store_seconds: float
    import_seconds: float
    update_seconds: float = 0.0
    small_seconds: float = 0.0

    def describe(self) -> str:
        return (
            f"setup (not timed above): {self.stored.images} images with "
            f"{self.stored.packages} package rows inserted in {self.store_seconds:.1f} s; "
            f"{self.records} records imported in {self.import_seconds:.1f} s, an update of "
            f"{self.update_records} (re-issued, withdrawn, new) in {self.update_seconds:.1f} s, "
            f"a small update of {SMALL_UPDATE} re-issued in {self.small_seconds:.1f} s"
        )


def prepare(
    sessions: sessionmaker[Session],
    rng: random.Random,
    pool: Pool,
    args: argparse.Namespace,
    tmp: Path,
) -> Setup:
    """Stored images, the first data imported; the update written, to import later."""
    maker = RecordMaker(rng, pool)
    records = maker.make(args.records)
    update = update_records(maker, records)
    first_zip = write_export(tmp / "all.zip", records)
    update_zip = write_export(tmp / "update.zip", update)
    # Drawn with a generator of its own, so the other phases' data stay as they were.
    small_maker = RecordMaker(random.Random(SEED + 1), pool)
    small = [
        small_maker.updated(r, SMALL_IMPORT) for r in small_maker.rng.sample(records, SMALL_UPDATE)
    ]
    small_zip = write_export(tmp / "small.zip", small)
    progress(f"storing {args.images} images, importing {len(records)} records")
    started = time.perf_counter()
    stored = store_images(sessions, rng, pool, args.images, records_naming(records))
    store_seconds = time.perf_counter() - started
    _, import_seconds = import_export(sessions, first_zip)
    return Setup(
        stored, len(records), len(update), update_zip, small_zip, store_seconds, import_seconds
    )


def make_matcher(
    celery: bool,
    stack: contextlib.ExitStack,
    sessions: sessionmaker[Session],
    database_url: str,
    batch: int,
    tmp: Path,
) -> Matcher:
    if not celery:
        return in_process_matcher(sessions, batch, Settings().rematch_versions)
    redis_server = stack.enter_context(RedisServer())
    settings = Settings(database_url=database_url, redis_url=redis_server.url)
    redis = stack.enter_context(Redis.from_url(redis_server.url))
    # The worker's own periodic kick would start a chain before the clock does.
    redis.set(keys.REMATCH_KICK, "bench", ex=24 * 3600)
    stack.enter_context(rematch_worker(settings, batch, tmp / "worker.log"))
    return celery_matcher(sessions, settings)


def _findings_fact(first: Outcome, again: Outcome) -> str:
    return (
        f"findings after B: {first.findings} in {first.affected_images} images (generation "
        f"{first.generation}); after C: {again.findings} in {again.affected_images} images "
        f"(generation {again.generation}); images not at the current generation after C: "
        f"{again.behind}"
    )


def _run_facts(
    args: argparse.Namespace, url: str, batch: int, stored: Stored, pushed: list[PushedImage]
) -> list[str]:
    how = "a real worker (1 thread) via Redis" if args.celery else "in this process, no Celery"
    candidates = sorted(stored.candidates)
    mean = sum(candidates) / len(candidates)
    packages = sum(p.packages for p in pushed) / len(pushed)
    return [
        f"database: {database_facts(args.database, url)}; registry: docker-registry "
        f"{registry_version()} on 127.0.0.1",
        f"A: {len(pushed) - 1} images ({packages:.0f} packages each on average), one process, "
        "a new client per image; base layer cached, own layer downloaded and analysed",
        f"B to E: rematch_batch in batches of {batch} images and "
        f"{Settings().rematch_versions} package versions, {how}, one at a time; "
        f"{stored.packages / stored.images:.0f} packages per image on average; records naming "
        f"an image's packages: mean {mean:.0f}, median {candidates[len(candidates) // 2]}, "
        f"max {candidates[-1]}",
    ]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="stored images")
    p.add_argument(
        "--scan-images", type=int, default=DEFAULT_SCAN_IMAGES, help="images re-scanned in A"
    )
    p.add_argument("--records", type=int, default=DEFAULT_RECORDS, help="OSV records imported")
    p.add_argument("--batch", type=int, default=None, help="images linked per re-match batch")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--celery", action="store_true", help="match through a real worker")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.images, args.scan_images, args.records, args.batch or 1) < 1:
        _parser().error("--images, --scan-images, --records and --batch must be at least 1")
    return run_main(lambda stack: run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
