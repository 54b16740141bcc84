"""The scan lifecycle end to end, driven through the API as a user would.

Every test runs against the real API and Celery workers (separate processes), a real
Redis, a real registry, and the database under test (SQLite and PostgreSQL).
"""

from __future__ import annotations

import signal
import sqlite3
import time

from redis import Redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from core import keys
from models import ScanResult
from testbed.images import Pusher
from testbed.proxy import FaultProxy, ListeningSocket
from testbed.services import RegistryServer
from testbed.stack import Api, Stack, wait_for


def spec(registry: str, repository: str = "", **extra) -> dict:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def test_regular_scan_of_everything_in_scope(api: Api, pusher: Pusher, registry, name):
    # Given two repositories, one with a multi-platform image
    one = pusher.push_image(f"{name}/web", "1.0", {"web": b"1"}, created="2024-03-01T10:00:00Z")
    index = pusher.push_multiplatform(f"{name}/cli", "2.0", {"cli": b"2"})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))

    # When a regular scan of everything is asked for with no body
    r = api.post("/api/v34.04/registry/scan")
    assert r.status_code == 200, r.text
    job = r.json()
    assert (job["kind"], job["status"]) == ("regular-all", "queued")

    # Then it completes, and each tagged image (each platform of the index) has a result
    done = api.wait_job(job["id"])
    assert done["status"] == "completed"
    assert done["counts"] == {"total": 2, "scanned": 2, "failed": 0, "skipped": 0}
    mine = [api.results(repository=f"{name}/{repo}") for repo in ("web", "cli")]
    assert [len(r) for r in mine] == [1, 2]
    web = api.results(name=f"{registry.host}/{name}/web:1.0")
    assert [r["repoTag"] for r in web] == [
        {"registry": registry.host, "repo": f"{name}/web", "tag": "1.0", "digest": one.digest}
    ]
    assert web[0]["id"] == one.config_digest
    assert web[0]["created"].startswith("2024-03-01T10:00:00")
    assert web[0]["tags"][0]["tag"] == "1.0"
    assert web[0]["vulnerabilityDistribution"]["total"] == 0
    cli = api.results(name=f"{registry.host}/{name}/cli:2.0")
    assert sorted(r["platform"] for r in cli) == ["linux/amd64", "linux/arm64/v8"]
    assert {r["digest"] for r in cli} == {c.digest for c in index.children}
    assert {r["indexDigest"] for r in cli} == {index.digest}


def test_only_images_of_the_specifications_os_are_scanned(api: Api, pusher: Pusher, registry, name):
    # Given an index with a Linux and a Windows image, and a Linux-only image
    index = pusher.push_multiplatform(
        f"{name}/tool", "1", {"t": b"1"}, ("linux/amd64", "windows/amd64")
    )
    pusher.push_image(f"{name}/web", "1", {"w": b"1"})
    host = f"http://{registry.host}"

    # When everything is scanned under the default os (linux)
    api.set_specs(spec(host, f"{name}/*"))
    done = api.wait_job(api.started())

    # Then the Windows image of the index is left out, and no image failed
    assert done["counts"] == {"total": 2, "scanned": 2, "failed": 0, "skipped": 0}
    tool = api.results(name=f"{registry.host}/{name}/tool:1")
    assert [r["platform"] for r in tool] == ["linux/amd64"]
    assert tool[0]["digest"] == index.children[0].digest

    # When the same images are scanned under a Windows specification
    api.set_specs(spec(host, f"{name}/*", os="windows"))
    done = api.wait_job(api.started())

    # Then the index gives its Windows image, and the Linux-only image fails saying why
    assert done["counts"] == {"total": 2, "scanned": 1, "failed": 1, "skipped": 0}
    tool = api.results(name=f"{registry.host}/{name}/tool:1")
    assert [r["platform"] for r in tool] == ["windows/amd64"]
    [web] = api.results(name=f"{registry.host}/{name}/web:1")
    assert "has no windows image" in web["err"] and "os setting" in web["err"]


def test_a_sweep_scans_the_newest_tags_up_to_cap_with_at_most_scanners_at_once(
    api: Api, pusher: Pusher, slow_registry: FaultProxy, name
):
    # Given 7 tags pushed in an order unrelated to their creation times
    repo = f"{name}/app"
    days = {"a": 5, "b": 1, "c": 7, "d": 3, "e": 6, "f": 2, "g": 4}
    for tag, day in days.items():
        pusher.push_image(repo, tag, {tag: tag.encode()}, created=f"2024-06-0{day}T12:00:00Z")
    slow_registry.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=3, scanners=2))

    # When a sweep runs
    done = api.wait_job(api.started(), timeout=60)

    # Then exactly the three newest tags were scanned, never more than two at a time
    assert done["status"] == "completed" and done["counts"]["total"] == 3
    assert {r["repoTag"]["tag"] for r in api.results(repository=repo)} == {"c", "e", "a"}
    assert slow_registry.max_in_flight == 2


def push_tags(pusher: Pusher, repo: str, n: int) -> list:
    return [
        pusher.push_image(
            repo,
            f"v{i}",
            {f"{repo}/{i}": str(i).encode()},
            created=f"2024-01-0{1 + i % 9}T00:{i:02d}:00Z",
        )
        for i in range(n)
    ]


def image(host: str, repo: str, tag: str) -> dict:
    return {"tag": {"registry": host, "repo": repo, "tag": tag, "digest": ""}}


def manifest_gets(proxy: FaultProxy, repo: str) -> int:
    """Manifest GETs seen for ``repo``, or for one tag with ``repo:tag``."""
    repo, _, tag = repo.partition(":")
    return proxy.count("GET", f"/v2/{repo}/manifests/{tag}")


def test_second_regular_scan_is_refused_or_waits_its_turn(
    api: Api, pusher: Pusher, slow_registry: FaultProxy, name
):
    # Given a regular scan that takes a while
    repo = f"{name}/app"
    push_tags(pusher, repo, 3)
    slow_registry.delay(0.4, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=1, cap=0))
    first = api.scan().json()

    # When another regular scan is asked for, of everything or of one image
    refused = [api.scan(), api.scan(image(slow_registry.host, repo, "v0"))]

    # Then both are refused with a message naming the scan and the two ways out
    for r in refused:
        assert r.status_code == 409, r.text
        err = r.json()["err"]
        assert f"regular scan {first['id']}" in err
        assert "POST /api/v1/registry/stop" in err and "?wait=true" in err

    # When they ask to wait instead, they are queued in order
    second = api.scan(wait="true").json()
    third = api.scan(image(slow_registry.host, repo, "v1"), wait="true").json()
    assert (second["status"], second["waited"]) == ("queued", True)
    assert third["status"] == "queued"

    # Then each starts by itself once the one before it has ended
    jobs = [api.wait_job(j["id"], timeout=90) for j in (first, second, third)]
    assert [j["status"] for j in jobs] == ["completed"] * 3
    assert jobs[1]["startedAt"] >= jobs[0]["finishedAt"]
    assert jobs[2]["startedAt"] >= jobs[1]["finishedAt"]
    assert jobs[2]["counts"]["scanned"] == 1


def test_stop_ends_a_sweep_with_images_in_flight_within_five_seconds(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name
):
    # Given a sweep of 8 images, 2 at a time, each slowed down, and a scan waiting behind it
    repo = f"{name}/app"
    push_tags(pusher, repo, 8)
    slow_registry.delay(1.5, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=2, cap=0))
    sweep = api.scan().json()
    waiting = api.scan(image(slow_registry.host, repo, "v0"), wait="true").json()
    wait_for(lambda: manifest_gets(slow_registry, repo) >= 2, 20, "images in flight")

    # When the user stops it
    started = time.monotonic()
    r = api.post("/api/v1/registry/stop")
    assert r.status_code == 200 and r.json()["stopped"]["id"] == sweep["id"]
    stopped = api.wait_job(sweep["id"], timeout=5)
    elapsed = time.monotonic() - started

    # Then it ends "stopped" within 5 s with partial counts, and nothing more is fetched
    assert stopped["status"] == "stopped" and elapsed < 5
    counts = stopped["counts"]
    assert counts["total"] == 8 and counts["scanned"] < 8 and counts["skipped"] > 0
    assert counts["scanned"] + counts["failed"] + counts["skipped"] == 8

    # (the waiting scan of v0 starts now; nothing else of the sweep is fetched any more)
    def fetched_by_sweep() -> int:
        return manifest_gets(slow_registry, repo) - manifest_gets(slow_registry, f"{repo}:v0")

    fetched = fetched_by_sweep()
    time.sleep(2)
    assert fetched_by_sweep() == fetched

    # And the lock is released: the waiting scan starts by itself and completes
    slow_registry.reset()
    assert api.wait_job(waiting["id"], timeout=60)["status"] == "completed"
    assert not Redis.from_url(stack.env["REGSCAN_REDIS_URL"]).exists(keys.REGULAR_LOCK)

    # And stopping when nothing runs is harmless
    again = api.post("/api/v1/registry/stop")
    assert again.status_code == 200 and again.json()["stopped"] is None


def test_on_demand_scans_run_beside_a_sweep_and_ignore_stop(
    api: Api, pusher: Pusher, registry: RegistryServer, slow_registry: FaultProxy, name
):
    # Given a slow sweep of one registry, and a second registry in scope
    slow, fast = f"{name}/slow", f"{name}/fast"
    push_tags(pusher, slow, 6)
    pusher.push_image(fast, "1", {"fast": b"1"})
    slow_registry.delay(1.0, path_prefix=f"/v2/{slow}/manifests")
    api.set_specs(
        spec(f"http://{slow_registry.host}", slow, scanners=1, cap=0),
        spec(f"http://{registry.host}", fast),
    )
    sweep = api.scan().json()
    wait_for(lambda: manifest_gets(slow_registry, slow) >= 1, 20, "the sweep to be scanning")

    # When an on-demand scan is asked for during the sweep
    on_demand = {"onDemandScan": True, **image(registry.host, fast, "1")}
    first = api.scan(on_demand).json()
    assert first["kind"] == "on-demand"

    # Then it finishes while the sweep still runs
    assert api.wait_job(first["id"], timeout=20)["status"] == "completed"
    assert api.job(sweep["id"])["status"] == "running"
    assert api.results(name=f"{registry.host}/{fast}:1")[0]["err"] == ""

    # When another on-demand scan starts and the sweep is stopped right after
    second = api.scan(on_demand).json()
    api.post("/api/v1/registry/stop")

    # Then the sweep stops and the on-demand scan is untouched by it
    assert api.wait_job(sweep["id"], timeout=10)["status"] == "stopped"
    done = api.wait_job(second["id"], timeout=20)
    assert done["status"] == "completed" and done["counts"]["scanned"] == 1


def test_out_of_scope_on_demand_scan_is_refused_and_never_contacts_the_registry(
    api: Api, registry: RegistryServer, name
):
    # Given a configuration covering one repository pattern of one registry
    outsider = ListeningSocket()
    api.set_specs(
        spec(f"http://{registry.host}", f"{name}/*", excludedRepositories=[f"{name}/secret"])
    )
    try:
        # When on-demand scans are asked for outside it
        asks = [
            image(outsider.host, f"{name}/app", "1"),  # another registry
            image(registry.host, "other/app", "1"),  # a repository the glob misses
            image(registry.host, f"{name}/secret", "1"),  # an excluded repository
        ]
        answers = [api.scan({"onDemandScan": True, **ask}) for ask in asks]

        # Then each is refused with a reason, and the outside registry sees no connection
        for r in answers:
            assert r.status_code == 403, r.text
            assert "outside the registry scope" in r.json()["err"]
        assert f"registry {outsider.host} is not configured" in answers[0].json()["err"]
        time.sleep(1)
        assert outsider.connections == 0
    finally:
        outsider.close()


def results_per_tag(db, job_id: int) -> dict[str, int]:
    with db() as session:
        rows = session.execute(
            select(ScanResult.tag, func.count())
            .where(ScanResult.job_id == job_id)
            .group_by(ScanResult.tag)
        )
        return {tag: n for tag, n in rows}


def test_sweep_survives_its_worker_being_killed(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name, db
):
    # Given a sweep of 10 images in progress
    repo = f"{name}/app"
    push_tags(pusher, repo, 10)
    slow_registry.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=2, cap=0))
    sweep = api.scan().json()
    wait_for(lambda: api.job(sweep["id"])["counts"]["scanned"] >= 2, 30, "some images done")

    # When the worker running it is killed with SIGKILL
    stack.kill("regular")
    killed_at = time.monotonic()

    # Then the lock it held is free within its TTL (3 s here)
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    wait_for(lambda: not redis.exists(keys.REGULAR_LOCK), 4, "the lock to expire")
    assert time.monotonic() - killed_at <= 3.5

    # And once a new worker starts, the sweep completes with every image scanned once
    stack.start_worker("regular", "regular,images")
    done = api.wait_job(sweep["id"], timeout=60)
    assert done["status"] == "completed" and done["attempts"] >= 2
    assert done["counts"] == {"total": 10, "scanned": 10, "failed": 0, "skipped": 0}
    assert results_per_tag(db, sweep["id"]) == {f"v{i}": 1 for i in range(10)}


def freeze_between_transactions(stack: Stack, worker: str) -> None:
    """SIGSTOP a worker at a moment it holds no SQLite write lock.

    A writer frozen inside a transaction would stall every process sharing the file
    (on PostgreSQL the server ends such a transaction after the lease TTL instead).
    """
    url = make_url(stack.env["REGSCAN_DATABASE_URL"])
    for _ in range(100):
        stack.signal(worker, signal.SIGSTOP)
        if url.get_backend_name() != "sqlite" or sqlite_writable(url.database):
            return
        stack.signal(worker, signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError(f"{worker} never left its write transactions")


def sqlite_writable(path: str) -> bool:
    conn = sqlite3.connect(path, timeout=0.2)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def test_paused_worker_cannot_write_after_its_lease_was_taken_over(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name, db
):
    # Given a sweep in progress on worker "regular"
    repo = f"{name}/app"
    push_tags(pusher, repo, 8)
    slow_registry.delay(0.3, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, scanners=2, cap=0))
    sweep = api.scan().json()
    wait_for(lambda: api.job(sweep["id"])["counts"]["scanned"] >= 1, 30, "some images done")

    # When that worker freezes past its lease and another worker takes the sweep over
    freeze_between_transactions(stack, "regular")
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    wait_for(lambda: not redis.exists(keys.REGULAR_LOCK), 5, "the frozen lease to expire")
    stack.start_worker("relief", "regular,images")
    wait_for(lambda: redis.exists(keys.REGULAR_LOCK), 15, "the new worker to take the lease")

    # And the frozen worker wakes up and carries on where it was
    stack.signal("regular", signal.SIGCONT)

    # Then the sweep completes, with no image written twice by the two of them
    done = api.wait_job(sweep["id"], timeout=60)
    assert done["status"] == "completed" and done["attempts"] >= 2
    assert done["counts"]["scanned"] == 8
    assert results_per_tag(db, sweep["id"]) == {f"v{i}": 1 for i in range(8)}
    stack.kill("relief")
