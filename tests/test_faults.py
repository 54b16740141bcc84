"""Faults on real processes: a stop mid-discovery, a worker killed or stopped mid-sweep,
a registry that fails after its headers, a Redis or a database that goes away.

Each test drives the real API and workers (separate processes) through the same
FaultProxy, redis-server and registry the other end-to-end tests use.
"""

from __future__ import annotations

from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.stack import Api, wait_for


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
