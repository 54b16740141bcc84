"""Faults on real processes: a stop mid-discovery, a worker killed or stopped mid-sweep,
a registry that fails after its headers, a Redis or a database that goes away.

Each test drives the real API and workers (separate processes) through the same
FaultProxy, redis-server and registry the other end-to-end tests use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import func, select

from core import keys
from models import ScanResult
from models.db import make_engine
from regscan.db import upgrade
from testbed.images import DOCKER_MANIFEST, Pusher
from testbed.proxy import FaultProxy
from testbed.services import PostgresServer, RedisServer, RegistryServer, free_port
from testbed.stack import ADMIN, FAST_TIMINGS, Api, Stack, wait_for


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


def test_a_stop_whose_redis_flag_was_lost_still_stops_the_sweep(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given a sweep still discovering, that the user stops
    pusher.push_image(f"{name}/app", "1", {"a": b"1"})
    slow_registry.delay(3, path_prefix="/v2/_catalog")
    api.set_specs(spec(f"http://{slow_registry.host}", f"{name}/*"))
    job_id = api.started()
    wait_for(lambda: slow_registry.count("GET", "/v2/_catalog") >= 1, 20, "discovery to start")
    assert api.post("/api/v1/registry/stop").json()["stopped"]["id"] == job_id

    # When Redis loses the stop flag (a restart without persistence)
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    assert redis.delete(keys.stop_flag(job_id)) == 1

    # Then the sweep still ends stopped: the job row remembers the stop
    done = api.wait_job(job_id, timeout=30)
    assert done["status"] == "stopped", done


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


# -- Redis and the database going away: a stack of its own, on services it may stop ------


@dataclass
class Outage:
    """A process stack on a Redis and (for PostgreSQL) a database of its own, which a
    test may stop and start again."""

    stack: Stack
    redis: RedisServer
    postgres: PostgresServer | None

    @property
    def api(self) -> Api:
        return self.stack.api

    def restart_redis_empty(self) -> None:
        """A Redis restart without persistence: a new, empty server at the same address."""
        port = self.redis.port
        self.redis.stop()
        self.redis = RedisServer(port=port).start()

    def jobs(self) -> list[dict[str, Any]]:
        return self.api.get("/api/v1/registry/scans", params={"limit": 250}).json()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def outage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outage]:
    redis = RedisServer(port=free_port()).start()
    postgres = PostgresServer().start() if request.param == "postgresql" else None
    database = postgres.url if postgres else f"sqlite:///{tmp_path_factory.mktemp('db')}/r.db"
    upgrade(database)
    env = {
        **os.environ,
        **FAST_TIMINGS,
        "REGSCAN_DATABASE_URL": database,
        "REGSCAN_REDIS_URL": redis.url,
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
    }
    stack = Stack(env, tmp_path_factory.mktemp("logs"))
    state = Outage(stack, redis, postgres)
    try:
        stack.start_api()
        stack.start_worker("regular", "regular,images")
        stack.start_worker("ondemand", "ondemand")
        yield state
    finally:
        stack.stop()
        state.redis.stop()
        if postgres is not None:
            postgres.remove()


def on_demand(registry: str, repo: str, tag: str) -> dict[str, Any]:
    return {"onDemandScan": True, "tag": {"registry": registry, "repo": repo, "tag": tag}}


def test_with_redis_down_a_scan_request_is_refused_and_leaves_no_job(
    outage: Outage, registry: RegistryServer, pusher: Pusher, name: str
):
    # Given an image in scope, and Redis gone
    pusher.push_image(f"{name}/app", "1", {"a": b"1"})
    outage.api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    before = len(outage.jobs())
    outage.redis.stop()
    try:
        # When an on-demand scan, a bulk of them and a regular scan are asked for
        answers = [
            outage.api.scan(on_demand(registry.host, f"{name}/app", "1")),
            outage.api.post(
                "/api/v1/registry/scan/bulk",
                json={"images": [{"registry": registry.host, "repo": f"{name}/app"}]},
            ),
            outage.api.scan(),
        ]
    finally:
        outage.restart_redis_empty()

    # Then each is told to ask again (503 with Retry-After), and no job was left behind
    assert [r.status_code for r in answers] == [503, 503, 503], [r.text for r in answers]
    assert all(r.headers.get("Retry-After") for r in answers)
    assert all("err" in r.json() for r in answers)
    assert len(outage.jobs()) == before

    # And once Redis is back, asking again works
    job = wait_for(
        lambda: (
            (r := outage.api.scan(on_demand(registry.host, f"{name}/app", "1"))).status_code == 200
            and r.json()
        ),
        30,
        "a scan request to be taken again",
    )
    assert outage.api.wait_job(job["id"], timeout=60)["status"] == "completed"


def _burst(
    outage: Outage, registry: str, repo: str, n: int, fault_after: int, fault: Any
) -> list[int]:
    """Ask for ``n`` on-demand scans one after another, causing ``fault`` after the
    ``fault_after``-th; the ids of the scans answered 200 (the others were refused)."""
    accepted = []
    for i in range(n):
        if i == fault_after:
            fault()
        r = outage.api.scan(on_demand(registry, repo, f"t{i % 5}"))
        if r.status_code == 200:
            accepted.append(r.json()["id"])
        else:
            assert r.status_code == 503, r.text  # told to ask again, never a server error
    return accepted


def _each_completed_once(outage: Outage, accepted: list[int], repo: str, within: float) -> None:
    deadline = time.monotonic() + within
    for job_id in accepted:
        try:
            job = outage.api.wait_job(job_id, timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnosis(outage, accepted)}") from None
        assert job["status"] == "completed", job
    # Exactly once: one result per job, and no job the client was not answered 200 for
    engine = make_engine(outage.stack.env["REGSCAN_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            per_job = dict(
                conn.execute(
                    select(ScanResult.job_id, func.count())
                    .where(ScanResult.repository == repo)
                    .group_by(ScanResult.job_id)
                ).all()
            )
    finally:
        engine.dispose()
    assert per_job == dict.fromkeys(accepted, 1)
    made = {j["id"] for j in outage.jobs() if j["target"] and j["target"]["repo"] == repo}
    assert made == set(accepted)


def _diagnosis(outage: Outage, accepted: list[int]) -> str:
    """What a failing outage test leaves behind: the jobs not done, and the workers' logs."""
    stuck = [outage.api.job(i) for i in accepted]
    lines = [f"job {j['id']}: {j['status']} attempts={j['attempts']}" for j in stuck]
    lines = [line for line in lines if "completed" not in line]
    for name in ("ondemand", "api"):
        log = outage.stack.logs / f"{name}.log"
        if log.exists():
            lines.append(f"--- {name}.log (end)\n" + log.read_text(errors="replace")[-4000:])
    return "\n".join(lines)


def test_on_demand_scans_accepted_around_a_redis_restarted_empty_each_complete_once(
    outage: Outage, registry: RegistryServer, pusher: Pusher, name: str
):
    # Given five images, and a registry slow enough that a burst of scans queues up
    repo = f"{name}/app"
    for i in range(5):
        pusher.push_image(repo, f"t{i}", {f"f{i}": str(i).encode()})
    with FaultProxy.for_url(registry.url) as slow:
        slow.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
        outage.api.set_specs(spec(f"http://{slow.host}", f"{name}/*"))

        # When 50 on-demand scans are asked for, and Redis restarts empty after the 20th
        accepted = _burst(outage, slow.host, repo, 50, 20, outage.restart_redis_empty)

        # Then every scan answered 200 completes within a minute, exactly once
        assert len(accepted) >= 40
        _each_completed_once(outage, accepted, repo, within=60)


def test_on_demand_scans_accepted_around_a_database_outage_each_complete_once(
    outage: Outage, registry: RegistryServer, pusher: Pusher, name: str
):
    if outage.postgres is None:
        pytest.skip("a SQLite file cannot be stopped")
    postgres = outage.postgres
    repo = f"{name}/app"
    for i in range(5):
        pusher.push_image(repo, f"t{i}", {f"f{i}": str(i).encode()})
    with FaultProxy.for_url(registry.url) as slow:
        slow.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
        outage.api.set_specs(spec(f"http://{slow.host}", f"{name}/*"))

        # When 30 on-demand scans are asked for, and PostgreSQL stops after the 20th
        # for 10 s
        accepted = _burst(outage, slow.host, repo, 30, 20, postgres.stop)
        time.sleep(10)
        postgres.start()

        # Then every scan answered 200 completes within a minute of the database's
        # return, exactly once, and the requests made while it was away were refused
        assert len(accepted) == 20
        _each_completed_once(outage, accepted, repo, within=60)


def test_a_worker_told_to_stop_hands_its_sweep_on_within_the_grace_period(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given a sweep of 30 slow images (about 20 s of work, two at a time) orchestrated by
    # the "regular" worker, and a second worker that can take it over
    repo = f"{name}/app"
    for i in range(30):
        pusher.push_image(repo, f"v{i}", {f"{i}": str(i).encode()})
    slow_registry.delay(1.5, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=2, cap=0))
    job_id = api.started()
    wait_for(lambda: api.job(job_id)["counts"]["scanned"] >= 1, 60, "the sweep to be under way")
    stack.start_worker("spare", "regular,images")

    # When the orchestrating worker is told to stop, as a rolling restart does (SIGTERM)
    asked = time.monotonic()
    try:
        exit_code = stack.terminate("regular")
        stopped_after = time.monotonic() - asked

        # Then it exits within the stop grace period (10 s here), not when the sweep ends
        assert exit_code == 0 and stopped_after < 10 + 5, stopped_after

        # And the sweep completes on the other worker, every image scanned
        done = api.wait_job(job_id, timeout=120)
        assert done["status"] == "completed", done
        assert done["counts"] == {"total": 30, "scanned": 30, "failed": 0, "skipped": 0}
    finally:
        # Leave the stack as the other tests expect it
        if "regular" not in stack.procs:
            stack.start_worker("regular", "regular,images")
        stack.terminate("spare")


def _sweep_results_per_tag(outage: Outage, job_id: int) -> dict[str, int]:
    engine = make_engine(outage.stack.env["REGSCAN_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(ScanResult.tag, func.count())
                .where(ScanResult.job_id == job_id)
                .group_by(ScanResult.tag)
            ).all()
    finally:
        engine.dispose()
    return {tag: n for tag, n in rows}


def _sweep_of_shared_images(
    outage: Outage, registry: RegistryServer, pusher: Pusher, name: str, slow: FaultProxy
) -> tuple[int, list[str]]:
    """A sweep of 40 tags, two on each image, written in batches two tasks at a time;
    its job id once it has written some, and the tags."""
    repo = f"{name}/app"
    tags = []
    for i in range(20):
        image = pusher.push_image(repo, f"v{i}", {"f": f"{name}{i}".encode()})
        pusher.push_manifest(repo, f"v{i}-b", image.manifest_bytes, DOCKER_MANIFEST)
        tags += [f"v{i}", f"v{i}-b"]
    slow.delay(0.2, path_prefix=f"/v2/{repo}/manifests")
    outage.api.set_specs(spec(f"http://{slow.host}", repo, scanners=2, cap=0))
    job_id = outage.api.started()
    wait_for(lambda: outage.api.job(job_id)["counts"]["scanned"] >= 4, 60, "some tags written")
    return job_id, tags


def test_a_sweeps_batched_writes_survive_a_database_outage_each_tag_once(
    outage: Outage, registry: RegistryServer, pusher: Pusher, name: str
):
    if outage.postgres is None:
        pytest.skip("a SQLite file cannot be stopped")
    with FaultProxy.for_url(registry.url) as slow:
        # Given a sweep whose tasks write their images in batches, under way
        job_id, tags = _sweep_of_shared_images(outage, registry, pusher, name, slow)

        # When PostgreSQL stops for 5 s in the middle of it
        outage.postgres.stop()
        time.sleep(5)
        outage.postgres.start()

        # Then the sweep completes, every tag scanned, with one result each
        done = outage.api.wait_job(job_id, timeout=120)
    assert done["status"] == "completed", done
    assert done["counts"] == {"total": 40, "scanned": 40, "failed": 0, "skipped": 0}
    assert _sweep_results_per_tag(outage, job_id) == dict.fromkeys(tags, 1)
