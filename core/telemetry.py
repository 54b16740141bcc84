"""Counters and histograms that worker processes keep, and the API's ``/metrics`` reports.

Workers have no HTTP port, come and go with rolling restarts, and run anywhere. So
rather than one scrape target per worker, every process adds what it counts to an
in-memory :class:`Tally` and flushes it every ``metrics_flush_seconds`` into one Redis
hash (:data:`core.keys.METRICS`) with ``HINCRBYFLOAT``: the API reads the cluster-wide
totals in one ``HGETALL`` when Prometheus scrapes it. Totals outlive the worker that
counted them (Redis runs append-only); a Redis restarted empty starts them again from
zero, which Prometheus reads as a counter reset.

Each metric is declared once in :data:`COUNTERS` or :data:`HISTOGRAMS` with its help
text and label names; labels take a bounded set of values (a registry host, an HTTP
status, an error class), never an image name or a job id.
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError

from core import keys

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "regscan_images_scanned": (
        "Image scans finished by workers, by kind (regular, on-demand), outcome "
        "(done, failed, skipped, interrupted) and reason (the error's class)",
        ("kind", "outcome", "reason"),
    ),
    "regscan_registry_requests": (
        "HTTP requests workers sent to registries, by registry and answer status",
        ("registry", "status"),
    ),
    "regscan_registry_bytes": (
        "Bytes the registries announced for the successful downloads workers asked for",
        ("registry",),
    ),
    "regscan_layer_cache": (
        "Layer lookups in the layer cache, by result (hit: analysed before; miss: "
        "downloaded and analysed now)",
        ("result",),
    ),
    "regscan_callback_deliveries": (
        "Completion callback delivery attempts, by outcome (delivered, rejected, retry, error)",
        ("outcome",),
    ),
}

# Seconds: an image from the layer cache takes well under a second, a big new one minutes.
SCAN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "regscan_image_scan_duration_seconds": (
        "Time a worker spent scanning one image, by kind and outcome",
        ("kind", "outcome"),
        SCAN_BUCKETS,
    ),
}


@dataclass(frozen=True)
class Histogram:
    """A histogram's totals as read back: cumulative bucket counts, sum and count."""

    buckets: list[tuple[float, float]]  # (upper bound, count), +Inf last
    sum: float
    count: float


class Tally:
    """What one process counted since its last flush. Thread-safe; cheap to add to."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pending: defaultdict[str, float] = defaultdict(float)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with these labels."""
        _, names = COUNTERS[name]
        self._add({_key(name, _labels(names, labels)): amount})

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation of histogram ``name`` (e.g. a scan's seconds)."""
        _, names, bounds = HISTOGRAMS[name]
        base = _labels(names, labels)
        added = {_key(f"{name}:count", base): 1.0, _key(f"{name}:sum", base): value}
        first = bisect_left(bounds, value)  # buckets are cumulative: every le >= value
        for bound in (*bounds[first:], float("inf")):
            added[_key(f"{name}:bucket", (*base, ("le", _le(bound))))] = 1.0
        self._add(added)

    def flush(self, redis: Redis) -> None:
        """Add what was counted to the shared totals; kept for the next flush if Redis
        does not answer."""
        with self._guard:
            pending, self._pending = self._pending, defaultdict(float)
        if not pending:
            return
        try:
            pipe = redis.pipeline(transaction=False)
            for key, amount in pending.items():
                pipe.hincrbyfloat(keys.METRICS, key, amount)
            pipe.execute()
        except RedisError as exc:
            log.info("metrics not flushed (kept for the next try): %s", exc)
            self._add(pending)

    def _add(self, amounts: dict[str, float]) -> None:
        with self._guard:
            for key, amount in amounts.items():
                self._pending[key] += amount


TALLY = Tally()
"""The tally of this process: workers count into it, :class:`Flusher` empties it."""


class Flusher:
    """A thread that flushes a tally every ``seconds`` and once more when stopped."""

    def __init__(self, tally: Tally, redis: Callable[[], Redis], seconds: float) -> None:
        self._tally = tally
        self._redis = redis
        self._seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        redis = self._redis()
        while not self._stop.wait(self._seconds):
            self._tally.flush(redis)
        self._tally.flush(redis)


# -- reading the totals back (the API) ---------------------------------------------------


def read_totals(
    redis: Redis,
) -> tuple[dict[str, dict[Labels, float]], dict[str, dict[Labels, Histogram]]]:
    """The shared totals: counters as {name: {labels: value}}, histograms as
    {name: {labels: Histogram}}. Fields of metrics no longer declared are ignored."""
    counters: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
    parts: dict[str, dict[Labels, _Parts]] = {name: {} for name in HISTOGRAMS}
    for raw_field, raw_value in redis.hgetall(keys.METRICS).items():
        name, labels = _parse_field(raw_field)
        value = float(raw_value)
        if name in counters:
            counters[name][labels] = value
            continue
        base_name, _, part = name.partition(":")
        if base_name in parts:
            _add_part(parts[base_name], labels, part, value)
    histograms = {
        name: {labels: p.histogram(HISTOGRAMS[name][2]) for labels, p in found.items()}
        for name, found in parts.items()
    }
    return counters, histograms


@dataclass
class _Parts:
    """A histogram's fields as they are read, one by one."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def histogram(self, bounds: tuple[float, ...]) -> Histogram:
        # A bucket no observation reached was never written: it holds none.
        buckets = [(bound, self.buckets.get(bound, 0.0)) for bound in bounds]
        buckets.append((float("inf"), self.buckets.get(float("inf"), self.count)))
        return Histogram(buckets=buckets, sum=self.sum, count=self.count)


def _add_part(found: dict[Labels, _Parts], labels: Labels, part: str, value: float) -> None:
    if part == "bucket":
        le = dict(labels).get("le", "+Inf")
        base = tuple(kv for kv in labels if kv[0] != "le")
        found.setdefault(base, _Parts()).buckets[float(le)] = value
    elif part == "sum":
        found.setdefault(labels, _Parts()).sum = value
    elif part == "count":
        found.setdefault(labels, _Parts()).count = value


# -- field names -------------------------------------------------------------------------


def _labels(names: Iterable[str], given: dict[str, str]) -> Labels:
    unknown = set(given) - set(names)
    if unknown:
        raise ValueError(f"unknown labels {sorted(unknown)}")
    return tuple((n, str(given.get(n, ""))) for n in names)


def _key(name: str, labels: Labels) -> str:
    return json.dumps([name, [list(kv) for kv in labels]], separators=(",", ":"))


def _parse_field(raw: bytes | str) -> tuple[str, Labels]:
    name, labels = json.loads(raw)
    return name, tuple((k, v) for k, v in labels)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
