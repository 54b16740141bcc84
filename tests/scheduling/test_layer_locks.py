"""Layer locks in process: a live holder keeps its layer however long it takes, and the
others wait for its analysis instead of downloading the layer again."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from core import keys
from core.settings import Settings
from scanner.inventory.results import LayerAnalysis
from scheduler.wiring import wire
from worker.inventory import LayerCache
from worker.runtime import Runtime

DIGEST = "sha256:" + "ab" * 32


def _runtime(template: Path, tmp_path: Path, redis_url: str, ttl: float) -> Runtime:
    database = tmp_path / "regscan.db"
    shutil.copy(template, database)
    settings = Settings(
        database_url=f"sqlite:///{database}", redis_url=redis_url, layer_lock_seconds=ttl
    )
    rt = Runtime.wired(wire(settings))
    rt.redis.delete(keys.layer_lock(DIGEST))
    return rt


def test_a_live_holder_keeps_its_layer_past_the_lock_ttl(
    migrated_template: Path, tmp_path: Path, redis_server: Any
):
    # Given a worker analysing a layer for 3 times the lock's TTL (1 s)
    rt = _runtime(migrated_template, tmp_path, redis_server.url, ttl=1.0)
    holder = LayerCache(rt, checkpoint=lambda: None)
    assert holder.get(DIGEST) is None  # a miss: it holds the layer's lock now

    got: list[LayerAnalysis | None] = []
    waiter = LayerCache(rt, checkpoint=lambda: None)
    other = threading.Thread(target=lambda: got.append(waiter.get(DIGEST)))
    other.start()
    time.sleep(3.0)

    # Then another worker is still waiting for it, rather than downloading it too
    assert other.is_alive() and got == []
    assert rt.redis.exists(keys.layer_lock(DIGEST))

    # And once the analysis is stored, the waiter reads it from the cache
    holder.put(DIGEST, "application/vnd.oci.image.layer.v1.tar+gzip", 10, LayerAnalysis(DIGEST))
    other.join(timeout=5)
    assert got and got[0] is not None and got[0].digest == DIGEST
    holder.release_all()
    waiter.release_all()
