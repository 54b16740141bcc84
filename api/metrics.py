"""``GET /metrics``: Prometheus metrics, in the text exposition format.

Two kinds of metric, read when Prometheus scrapes:

- state, read from the database and Redis by this API process: jobs by kind and status,
  the regular scan's progress, the depth of each Celery queue, the on-demand backlog per
  team, the vulnerability data's generation, age and size, the re-match backlog;
- counts the workers keep (images scanned and failed, scan durations, registry
  requests and bytes, layer-cache hits and misses, callback deliveries), which reach
  this process through Redis (see :mod:`core.telemetry` for why).

Reading it needs ``Authorization: Bearer <REGSCAN_METRICS_TOKEN>``, or any user or API
token (a viewer token is enough). A part that cannot be read (the database is down) is
left out and ``regscan_metrics_part_up{part=...}`` says so; the rest is still served.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from api import freshness
from api.deps import AppState, app_state
from core import telemetry
from core.tasks import QUEUES
from models import fleet, jobs

log = logging.getLogger(__name__)

# Kombu's Redis transport keeps a queue's messages of priority N in "<queue>\x06\x16N".
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class RegscanCollector(Collector):
    """Everything ``/metrics`` shows, gathered afresh at each scrape."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._parts: tuple[tuple[str, Callable[[], Iterable[Metric]]], ...] = (
            ("jobs", self._jobs),
            ("queues", self._queues),
            ("vulndb", self._vulndb),
            ("workers", self._workers),
        )

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "regscan_metrics_part_up",
            "Whether a part of these metrics could be read at this scrape",
            labels=["part"],
        )
        for name, part in self._parts:
            try:
                yield from list(part())
                up.add_metric([name], 1)
            except Exception as exc:
                log.warning("metrics part %s unavailable: %s", name, type(exc).__name__)
                up.add_metric([name], 0)
        yield up

    # -- state ---------------------------------------------------------------------------

    def _jobs(self) -> Iterator[Metric]:
        with self.state.sessions() as session:
            counts = fleet.job_counts(session)
            backlog = fleet.ondemand_backlog(session)
            regular = jobs.latest_regular_job(session)
        by_status = GaugeMetricFamily(
            "regscan_jobs", "Scan jobs stored, by kind and status", labels=["kind", "status"]
        )
        for kind, status, n in counts:
            by_status.add_metric([kind, status], n)
        yield by_status
        waiting = GaugeMetricFamily(
            "regscan_ondemand_backlog",
            "On-demand scans waiting or running, by team and status",
            labels=["team", "status"],
        )
        for b in backlog:
            waiting.add_metric([b.team, "queued"], b.queued)
            waiting.add_metric([b.team, "running"], b.running)
        yield waiting
        yield from _regular_progress(regular)

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "regscan_queue_messages",
            "Messages waiting on each Celery queue (not yet taken by a worker)",
            labels=["queue"],
        )
        pipe = self.state.redis.pipeline(transaction=False)
        for queue in QUEUES.values():
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(queue + suffix)
        lengths = iter(pipe.execute())
        for queue in QUEUES.values():
            depth.add_metric([queue], sum(next(lengths) for _ in _PRIORITY_SUFFIXES))
        yield depth

    def _vulndb(self) -> Iterator[Metric]:
        with self.state.sessions() as session:
            fresh = fleet.vuln_freshness(session)
        yield _gauge("regscan_vulndb_generation", "Vulnerability data generation", fresh.generation)
        yield _gauge("regscan_vulndb_records", "OSV records stored", fresh.records)
        yield _gauge(
            "regscan_rematch_backlog_images",
            "Images whose findings predate the current vulnerability data",
            fresh.images_due,
        )
        if fresh.changed_at is not None:
            changed = fresh.changed_at.timestamp()
            yield _gauge(
                "regscan_vulndb_last_change_timestamp_seconds",
                "When the vulnerability data last changed (Unix time)",
                changed,
            )
            yield _gauge(
                "regscan_vulndb_age_seconds",
                "Seconds since the vulnerability data last changed",
                time.time() - changed,
            )
        yield from _sources(fresh)

    # -- what the workers counted ------------------------------------------------------

    def _workers(self) -> Iterator[Metric]:
        counters, histograms = telemetry.read_totals(self.state.redis)
        for name, (help_text, labels) in telemetry.COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=list(labels))
            for values, total in sorted(counters[name].items()):
                family.add_metric([v for _k, v in values], total)
            yield family
        for name, (help_text, labels, _bounds) in telemetry.HISTOGRAMS.items():
            hist = HistogramMetricFamily(name, help_text, labels=list(labels))
            for values, h in sorted(histograms[name].items()):
                buckets = [(_le(bound), count) for bound, count in h.buckets]
                hist.add_metric([v for _k, v in values], buckets, sum_value=h.sum)
            yield hist


def _regular_progress(job: jobs.ScanJob | None) -> Iterator[Metric]:
    running = job is not None and not job.status.is_final
    yield _gauge(
        "regscan_regular_scan_running", "Whether a regular scan is running now", int(running)
    )
    yield _gauge(
        "regscan_regular_scan_discovering",
        "Whether the running regular scan is still discovering images",
        int(running and job is not None and job.discovered_at is None),
    )
    images = GaugeMetricFamily(
        "regscan_regular_scan_images",
        "Images of the running (or last) regular scan, by state",
        labels=["state"],
    )
    if job is not None:
        done = job.images_scanned + job.images_failed + job.images_skipped
        images.add_metric(["total"], job.images_total)
        images.add_metric(["scanned"], job.images_scanned)
        images.add_metric(["failed"], job.images_failed)
        images.add_metric(["skipped"], job.images_skipped)
        images.add_metric(["remaining"], max(0, job.images_total - done))
    yield images


def _sources(fresh: fleet.VulnFreshness) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "regscan_vulndb_source_up",
        "Whether a vulnerability data source's last refresh succeeded",
        labels=["source"],
    )
    refreshed = GaugeMetricFamily(
        "regscan_vulndb_source_last_refresh_timestamp_seconds",
        "When a vulnerability data source was last refreshed (Unix time)",
        labels=["source"],
    )
    for source in fresh.sources:
        up.add_metric([source.location], int(freshness.source_status(source) != "failing"))
        if source.refreshed_at is not None:
            refreshed.add_metric([source.location], source.refreshed_at.timestamp())
    yield up
    yield refreshed


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# -- the endpoint ------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RegscanCollector(app.state.regscan))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        _authorize(request)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _authorize(request: Request) -> None:
    """The metrics token, else any user or API token (401 otherwise)."""
    state = app_state(request)
    token = state.settings.metrics_token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode())
    ):
        return
    state.auth.principal_of(request)
