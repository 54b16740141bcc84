"""An image's layers read in parallel, through the worker's own layer cache over a real
Redis and SQLite and a real registry: the same inventory as one layer at a time, one
download per layer, and the layer locks and stop checkpoints as they are with one at a
time. A proxy in front of the registry counts and slows the blob downloads.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import keys
from core.settings import Settings
from models import layers as layer_store
from models.db import transaction
from regscan.db import upgrade
from scanner.errors import InvalidContent, ScanStopped
from scanner.inventory.analysis import analyse_layer
from scanner.inventory.catalogers import ALL
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory
from scanner.registry.client import RegistryClient
from scanner.registry.images import resolve_image
from scheduler.wiring import wire
from testbed.images import OCI_LAYER_GZIP, Blob, Pusher, make_layer, sha256_digest
from testbed.proxy import FaultProxy
from worker.inventory import take_inventory
from worker.runtime import Runtime

pytestmark = pytest.mark.registry_client(via_proxy=True, retries=1)

REDIS_DB = 14  # the process-stack tests use the low database numbers, scheduling 15

OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def dpkg_status(*packages: tuple[str, str]) -> bytes:
    return "".join(
        f"Package: {name}\nStatus: install ok installed\nVersion: {version}\n\n"
        for name, version in packages
    ).encode()


def dist_info(name: str, version: str) -> dict[str, bytes]:
    path = f"usr/lib/python3/dist-packages/{name}-{version}.dist-info/METADATA"
    return {path: f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()}


def npm(name: str, version: str) -> dict[str, bytes]:
    manifest = json.dumps({"name": name, "version": version}).encode()
    return {f"app/node_modules/{name}/package.json": manifest}


def bulk(seed: int) -> dict[str, bytes]:
    """Files no cataloger reads, so a layer takes a moment to read."""
    return {f"usr/share/bulk/{seed}/{n}.bin": bytes([seed, n]) * 50_000 for n in range(20)}


def whiteouts(*paths: str) -> dict[str, bytes]:
    """The entries that delete ``paths`` from the layers below."""
    return {f"{os.path.dirname(p)}/.wh.{os.path.basename(p)}": b"" for p in paths}


def escaping_layer() -> Blob:
    """A layer with a member that climbs out of the image root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../etc/passwd"), io.BytesIO(b""))
    data = gzip.compress(buffer.getvalue(), mtime=0)
    return Blob.of(data, OCI_LAYER_GZIP, diff_id=sha256_digest(buffer.getvalue()))


def layered_image() -> list[Blob]:
    """Six layers whose order matters: later layers delete, replace and re-add; the
    last one holds no package files, and images put it in twice."""
    base = make_layer(
        {
            "etc/os-release": OS_RELEASE,
            "var/lib/dpkg/status": dpkg_status(("libc6", "2.36-9"), ("openssl", "3.0.11-1")),
            **dist_info("requests", "2.28.1"),
            **dist_info("urllib3", "1.26.12"),
            **bulk(1),
        }
    )
    python = make_layer({**dist_info("flask", "2.2.2"), **npm("left-pad", "1.3.0"), **bulk(2)})
    upgrade_layer = make_layer(
        {
            "var/lib/dpkg/status": dpkg_status(
                ("libc6", "2.36-9"), ("openssl", "3.0.13-1"), ("curl", "7.88.1-10")
            ),
            **dist_info("urllib3", "2.0.7"),
            **bulk(3),
        }
    )
    removal = make_layer(
        whiteouts(
            "usr/lib/python3/dist-packages/urllib3-1.26.12.dist-info",
            "app/node_modules/left-pad",
        )
    )
    app = make_layer(
        {
            **whiteouts("usr/lib/python3/dist-packages/flask-2.2.2.dist-info"),
            **dist_info("flask", "3.0.0"),
            **npm("express", "4.18.2"),
            **bulk(4),
        }
    )
    docs = make_layer(bulk(5))
    return [base, python, upgrade_layer, removal, app, docs]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "regscan.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def runtime(migrated_template: Path, tmp_path: Path, redis_server: Any) -> Iterator[Runtime]:
    """A worker's runtime on a fresh SQLite file and Redis database."""
    database = tmp_path / "regscan.db"
    shutil.copy(migrated_template, database)
    settings = Settings(
        database_url=f"sqlite:///{database}",
        redis_url=redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
    )
    rt = Runtime.wired(wire(settings))
    rt.redis.flushdb()
    try:
        yield rt
    finally:
        rt.redis.flushdb()
        rt.sessions.kw["bind"].dispose()


def with_parallelism(rt: Runtime, parallel: int) -> Runtime:
    """The same runtime, reading ``parallel`` layers at once."""
    settings = rt.settings.model_copy(update={"layer_parallelism": parallel})
    return Runtime(settings, rt.sessions, rt.redis, rt.publisher, rt.admission, rt.recovery)


def scan(
    rt: Runtime, client: RegistryClient, repo: str, checkpoint: Callable[[], None] | None = None
) -> Inventory:
    """Take the inventory of ``repo:1`` as the worker does."""
    [image] = resolve_image(client, repo, "1")
    return take_inventory(rt, client, repo, image, checkpoint or (lambda: None))


def forget_layers(rt: Runtime) -> None:
    with transaction(rt.sessions) as session:
        session.query(layer_store.LayerAnalysis).delete()


def cached_digests(rt: Runtime) -> list[str]:
    with rt.sessions() as session:
        return sorted(session.scalars(layer_store.select(layer_store.LayerAnalysis.digest)))


def layer_locks(rt: Runtime) -> list[bytes]:
    return list(rt.redis.scan_iter(keys.layer_lock("*")))


def blob_gets(proxy: FaultProxy, repo: str, layers: list[Blob]) -> list[str]:
    digests = {blob.digest for blob in layers}
    return sorted(
        target.rpartition("/")[2]
        for method, target in proxy.requests
        if method == "GET"
        and target.startswith(f"/v2/{repo}/blobs/")
        and target.rpartition("/")[2] in digests
    )


# -- the same inventory ----------------------------------------------------------------------


def test_layers_read_in_parallel_give_the_same_inventory_as_one_at_a_time(
    runtime: Runtime, client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given an image of layers that delete, replace and re-add packages, one of them
    # twice, and blob downloads slowed so that parallel reads overlap
    layers = layered_image()
    docs = layers[5]
    pusher.push_image(name, "1", [layers[0], docs, *layers[1:]], oci=True)
    proxy.delay(0.2, f"/v2/{name}/blobs/")

    # When it is scanned one layer at a time, then with an empty cache four at a time
    one_at_a_time = scan(with_parallelism(runtime, 1), client, name)
    assert proxy.max_in_flight == 1
    forget_layers(runtime)
    proxy.clear()
    parallel = scan(with_parallelism(runtime, 4), client, name)

    # Then both inventories are the same, package by package and layer by layer
    assert parallel == one_at_a_time
    assert [(p.name, p.version, p.layer) for p in parallel.packages] == [
        ("express", "4.18.2", layers[4].digest),
        ("curl", "7.88.1-10", layers[2].digest),
        ("libc6", "2.36-9", layers[2].digest),
        ("openssl", "3.0.13-1", layers[2].digest),
        ("flask", "3.0.0", layers[4].digest),
        ("requests", "2.28.1", layers[0].digest),
        ("urllib3", "2.0.7", layers[2].digest),
    ]
    assert parallel.os.distro == "debian"
    # And the layers were read at once, each downloaded once and cached once
    assert proxy.max_in_flight >= 2
    assert blob_gets(proxy, name, layers) == sorted(blob.digest for blob in layers)
    assert cached_digests(runtime) == sorted(blob.digest for blob in layers)
    assert layer_locks(runtime) == []


# -- failures, stops and locks ----------------------------------------------------------------


def test_a_hostile_layer_read_in_parallel_fails_the_image_and_leaves_no_lock(
    runtime: Runtime, client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given an image whose third layer escapes the root, among layers slow to download
    layers = layered_image()
    hostile = escaping_layer()
    pusher.push_image(name, "1", [layers[0], layers[1], hostile, layers[4]], oci=True)
    proxy.delay(0.3, f"/v2/{name}/blobs/{layers[0].digest}")

    # When it is scanned four layers at a time, then the hostile layer's error is raised
    with pytest.raises(InvalidContent, match=f"layer {hostile.digest}: member '../etc/passwd'"):
        scan(with_parallelism(runtime, 4), client, name)

    # And nothing is cached for it, and no layer stays locked for other workers
    assert hostile.digest not in cached_digests(runtime)
    assert layer_locks(runtime) == []


def test_a_stop_while_layers_are_read_in_parallel_ends_the_scan_and_frees_the_locks(
    runtime: Runtime, client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given an image of six slow layers, and a stop that comes after two downloads began
    layers = layered_image()
    pusher.push_image(name, "1", layers, oci=True)
    proxy.delay(0.3, f"/v2/{name}/blobs/")
    started: list[None] = []
    guard = threading.Lock()

    def checkpoint() -> None:
        with guard:
            started.append(None)
            if len(started) > 2:
                raise ScanStopped("scan 1 was stopped")

    # When it is scanned two layers at a time, then the stop ends it
    with pytest.raises(ScanStopped):
        scan(with_parallelism(runtime, 2), client, name, checkpoint)

    # And no more than the two downloads under way were made, and no lock is left
    assert len(blob_gets(proxy, name, layers)) <= 2
    assert layer_locks(runtime) == []


def test_a_layer_another_worker_is_reading_is_waited_for_and_not_downloaded_again(
    runtime: Runtime, client: RegistryClient, pusher: Pusher, proxy: FaultProxy, name: str
) -> None:
    # Given an image of six layers, the base of which another worker is reading
    layers = layered_image()
    pusher.push_image(name, "1", layers, oci=True)
    other = runtime.redis.lock(keys.layer_lock(layers[0].digest), timeout=30)
    assert other.acquire(blocking=False)
    result: list[Inventory] = []
    scanning = threading.Thread(
        target=lambda: result.append(scan(with_parallelism(runtime, 4), client, name))
    )

    # When this worker scans the image, and the other one then stores the base layer
    scanning.start()
    scanning.join(1.0)
    assert scanning.is_alive()  # waiting for the base layer
    base = layers[0]
    analysis = analyse_layer(
        io.BytesIO(base.data), digest=base.digest, media_type=base.media_type, catalogers=ALL
    )
    with transaction(runtime.sessions) as session:
        layer_store.store_analysis(
            session, base.digest, ANALYSER_VERSION, base.media_type, base.size, analysis.to_json()
        )
    other.release()
    scanning.join(30)

    # Then the scan finished with the base layer's packages, which it never downloaded
    assert not scanning.is_alive() and result
    assert ("requests", base.digest) in [(p.name, p.layer) for p in result[0].packages]
    assert base.digest not in blob_gets(proxy, name, layers)
    assert layer_locks(runtime) == []


def test_the_default_parallelism_comes_from_the_cores() -> None:
    assert Settings().layer_parallelism == max(2, len(os.sched_getaffinity(0)))
    assert Settings(layer_parallelism=1).layer_parallelism == 1
