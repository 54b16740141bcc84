"""``/metrics`` as Prometheus sees it: scraped from the running stack and parsed with
prometheus-client's own parser, while a sweep runs and after it; and the workers'
counters on their way through Redis (``core.telemetry``), against a real redis-server.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from core import keys, telemetry
from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RedisServer
from testbed.stack import METRICS_TOKEN, Api, Stack, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def spec(registry: str, repository: str = "", **extra: Any) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def scrape(base: str, **request: Any) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client: {(name, labels): value}."""
    request.setdefault("headers", {"Authorization": f"Bearer {METRICS_TOKEN}"})
    r = requests.get(f"{base}/metrics", timeout=30, **request)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


class Receiver:
    """A callback receiver on loopback that answers 200."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # By name: callbacks go to loopback only through REGSCAN_CALLBACK_ALLOW.
        self.url = f"http://localhost:{self.server.server_address[1]}/done"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


# -- the running stack ---------------------------------------------------------------------


def test_workers_counters_move_during_a_sweep_and_reach_the_scrape(
    api: Api, stack: Stack, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given six images on one base layer, behind a registry whose manifests take a while,
    # scanned one at a time
    repo = f"{name}/app"
    for n in range(6):
        pusher.push_image(repo, f"v{n}", [{"base": name.encode()}, {f"f{n}": f"{n}".encode()}])
    slow_registry.delay(0.5, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=0, scanners=1))
    registry = slow_registry.host
    before = scrape(api.base)

    # When a sweep runs
    job_id = api.started()

    # Then, while it still runs, the workers' counters already move in the scrape
    def moved_mid_sweep() -> Samples | None:
        now = scrape(api.base)
        done = total(now, "regscan_images_scanned_total", kind="regular", outcome="done")
        running = total(now, "regscan_regular_scan_running") == 1
        was = total(before, "regscan_images_scanned_total", kind="regular", outcome="done")
        return now if running and done > was else None

    mid = wait_for(moved_mid_sweep, 60, "images counted while the sweep runs")
    assert total(mid, "regscan_regular_scan_images", state="total") == 6
    assert total(mid, "regscan_regular_scan_images", state="remaining") > 0

    # And once it completed, every image is counted, with its duration and its requests
    assert api.wait_job(job_id, timeout=90)["status"] == "completed"

    def settled() -> Samples | None:
        now = scrape(api.base)
        kind = {"kind": "regular", "outcome": "done"}
        grown = total(now, "regscan_images_scanned_total", **kind) - total(
            before, "regscan_images_scanned_total", **kind
        )
        return now if grown == 6 else None

    after = wait_for(settled, 30, "the last images to be flushed")
    hist = "regscan_image_scan_duration_seconds"
    assert (
        total(after, f"{hist}_count", kind="regular")
        - total(before, f"{hist}_count", kind="regular")
        == 6
    )
    assert total(after, f"{hist}_bucket", kind="regular", le="+Inf") == total(
        after, f"{hist}_count", kind="regular"
    )
    assert total(after, f"{hist}_sum", kind="regular") > total(
        before, f"{hist}_sum", kind="regular"
    )
    ok = {"registry": registry, "status": "200"}
    assert total(after, "regscan_registry_requests_total", **ok) > total(
        before, "regscan_registry_requests_total", **ok
    )
    assert total(after, "regscan_registry_bytes_total", registry=registry) > 0
    # The base layer is shared: downloaded once (a miss), then found in the cache (hits)
    assert total(after, "regscan_layer_cache_total", result="miss") > total(
        before, "regscan_layer_cache_total", result="miss"
    )
    assert total(after, "regscan_layer_cache_total", result="hit") > total(
        before, "regscan_layer_cache_total", result="hit"
    )
    # The state read at scrape time
    assert total(after, "regscan_jobs", kind="regular-all", status="completed") >= 1
    assert total(after, "regscan_regular_scan_running") == 0
    assert total(after, "regscan_regular_scan_images", state="scanned") == 6
    queues = {dict(labels)["queue"] for n, labels in after if n == "regscan_queue_messages"}
    assert queues == {
        "regscan.regular",
        "regscan.images",
        "regscan.ondemand",
        "regscan.rematch",
        "regscan.callbacks",
    }
    assert {dict(labels)["part"] for n, labels in after if n == "regscan_metrics_part_up"} == {
        "jobs",
        "queues",
        "vulndb",
        "workers",
    }
    assert all(v == 1 for (n, _), v in after.items() if n == "regscan_metrics_part_up")


def test_failures_backlog_and_callbacks_are_counted(
    api: Api, pusher: Pusher, registry, receiver: Receiver, name: str
):
    # Given an image in scope, and one that is not in the registry
    repo = f"{name}/app"
    pusher.push_image(repo, "1", {"a": b"1"})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    before = scrape(api.base)

    # When an on-demand scan with a callback succeeds and one of a missing tag fails
    ok = api.started(
        {
            "onDemandScan": True,
            "tag": {"registry": registry.host, "repo": repo, "tag": "1"},
            "callbackUrl": receiver.url,
        }
    )
    missing = api.started(
        {"onDemandScan": True, "tag": {"registry": registry.host, "repo": repo, "tag": "nope"}}
    )
    assert api.wait_job(ok)["status"] == "completed"
    assert api.wait_job(missing)["status"] == "failed"

    # Then the failure is counted by its reason, and the callback as delivered
    def counted() -> Samples | None:
        now = scrape(api.base)
        failed = {"kind": "on-demand", "outcome": "failed", "reason": "NotFound"}
        grew = total(now, "regscan_images_scanned_total", **failed) > total(
            before, "regscan_images_scanned_total", **failed
        )
        delivered = total(now, "regscan_callback_deliveries_total", outcome="delivered") > total(
            before, "regscan_callback_deliveries_total", outcome="delivered"
        )
        return now if grew and delivered else None

    now = wait_for(counted, 30, "the failure and the callback to be counted")
    assert total(now, "regscan_jobs", kind="on-demand", status="failed") >= 1
    assert total(now, "regscan_vulndb_generation") >= 0
    assert ("regscan_rematch_backlog_images", ()) in now


def test_metrics_need_the_token_or_a_user(api: Api, stack: Stack):
    base = stack.api.base
    # No credentials, a wrong token: refused with the API's error shape
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        r = requests.get(f"{base}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert "err" in r.json()
    # The metrics token, the admin, or a viewer's API token: allowed
    assert scrape(base)
    assert scrape(base, headers={}, auth=("admin", "test-admin-password"))
    viewer = api.post(
        "/api/v1/tokens", json={"name": "prometheus", "team": "obs", "role": "viewer"}
    )
    assert viewer.status_code == 200, viewer.text
    assert scrape(base, headers={"Authorization": f"Bearer {viewer.json()['token']}"})


# -- the counters' way through Redis ---------------------------------------------------------


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/12")
    client.delete(keys.METRICS)
    yield client
    client.delete(keys.METRICS)


def test_tallies_of_several_processes_add_up_in_redis(redis: Redis):
    # Given two workers' tallies
    first, second = telemetry.Tally(), telemetry.Tally()
    first.inc("regscan_registry_requests", registry="r:5000", status="200")
    first.inc("regscan_registry_bytes", 1500, registry="r:5000")
    second.inc("regscan_registry_requests", 2, registry="r:5000", status="200")
    first.observe("regscan_image_scan_duration_seconds", 0.3, kind="regular", outcome="done")
    second.observe("regscan_image_scan_duration_seconds", 45, kind="regular", outcome="done")

    # When both flush (twice: a second flush with nothing new adds nothing)
    for tally in (first, second, first, second):
        tally.flush(redis)

    # Then the totals are their sums, and the histogram's buckets are cumulative
    counters, histograms = telemetry.read_totals(redis)
    requests_ = counters["regscan_registry_requests"]
    assert requests_ == {(("registry", "r:5000"), ("status", "200")): 3.0}
    assert counters["regscan_registry_bytes"] == {(("registry", "r:5000"),): 1500.0}
    [(labels, hist)] = histograms["regscan_image_scan_duration_seconds"].items()
    assert labels == (("kind", "regular"), ("outcome", "done"))
    assert (hist.count, hist.sum) == (2, 45.3)
    buckets = dict(hist.buckets)
    assert (buckets[0.25], buckets[0.5], buckets[30.0], buckets[60.0]) == (0, 1, 1, 2)
    assert buckets[float("inf")] == 2


def test_a_tally_keeps_its_counts_while_redis_does_not_answer(redis: Redis):
    tally = telemetry.Tally()
    tally.inc("regscan_layer_cache", result="hit")
    tally.flush(Redis(port=1, socket_connect_timeout=0.5))  # nothing listens there
    tally.flush(redis)
    counters, _ = telemetry.read_totals(redis)
    assert counters["regscan_layer_cache"] == {(("result", "hit"),): 1.0}


def test_unknown_labels_are_refused():
    with pytest.raises(ValueError, match="unknown labels"):
        telemetry.TALLY.inc("regscan_layer_cache", result="hit", image="x")
