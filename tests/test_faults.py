"""Faults on real processes: a stop mid-discovery, a worker killed or stopped mid-sweep,
a registry that fails after its headers, a Redis or a database that goes away.

Each test drives the real API and workers (separate processes) through the same
FaultProxy, redis-server and registry the other end-to-end tests use.
"""

from __future__ import annotations

import os
import time

from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.stack import Api, Stack, wait_for


def spec(registry: str, repository: str = "", **extra) -> dict:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def test_a_stop_during_discovery_ends_the_sweep_stopped(
    api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given a registry whose catalog takes seconds to list, behind a sweep of it
    pusher.push_image(f"{name}/app", "1", {"a": b"1"})
    slow_registry.delay(3, path_prefix="/v2/_catalog")
    api.set_specs(spec(f"http://{slow_registry.host}", f"{name}/*"))
    job_id = api.started()
    wait_for(lambda: slow_registry.count("GET", "/v2/_catalog") >= 1, 20, "discovery to start")

    # When the user stops it while it is still discovering
    assert api.post("/api/v1/registry/stop").json()["stopped"]["id"] == job_id

    # Then it ends stopped, not complete: it never saw everything it was asked to scan
    done = api.wait_job(job_id, timeout=30)
    assert done["status"] == "stopped", done
    assert done["discoveredAt"] is None
    status = api.get("/api/v1/statuses/registry").json()
    assert (status["scanID"], status["status"]) == (job_id, "stopped")


def test_a_worker_killed_while_holding_a_layer_delays_the_sweep_by_the_lock_ttl_only(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given a sweep whose one image has a layer that downloads slowly, through the one
    # worker that scans images (the layer lock's TTL is the default, 10 s)
    repo = f"{name}/app"
    pushed = pusher.push_image(repo, "1", {"big.bin": os.urandom(256 << 10)})
    layer = f"/v2/{repo}/blobs/{pushed.layers[0].digest}"
    slow_registry.delay(60, path_prefix=layer)
    api.set_specs(spec(f"http://{slow_registry.host}", repo))
    job_id = api.started()
    wait_for(lambda: slow_registry.count("GET", layer) >= 1, 30, "the layer download")

    # When that worker is killed mid-download, the registry is fast again, and a new
    # worker starts
    stack.kill("regular")
    killed_at = time.monotonic()
    slow_registry.reset()
    stack.start_worker("regular", "regular,images")

    # Then the sweep completes within the layer lock's TTL plus a takeover and one scan,
    # not when the dead worker's lock would have expired on its own
    done = api.wait_job(job_id, timeout=60)
    assert done["status"] == "completed", done
    assert done["counts"]["scanned"] == 1
    assert time.monotonic() - killed_at < 10 + 15
