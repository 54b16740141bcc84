"""What workers count for ``/metrics`` (core/telemetry.py says how it reaches the scrape):
image scans with their duration, registry requests and bytes, layer-cache lookups,
callback deliveries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.auth import AuthBase

from core.telemetry import TALLY


class ScanOutcome:
    """How one image scan ended; set by the code that ends it."""

    def __init__(self) -> None:
        self.outcome = "done"
        self.reason = ""

    def failed(self, error: BaseException) -> None:
        self.outcome, self.reason = "failed", type(error).__name__

    def skipped(self) -> None:
        self.outcome = "skipped"

    def interrupted(self, error: BaseException) -> None:
        """The database or Redis went away (the job is run again), or the worker stops."""
        self.outcome, self.reason = "interrupted", type(error).__name__


@contextmanager
def image_scan(kind: str) -> Iterator[ScanOutcome]:
    """Count one image scan and its duration, however it ends."""
    outcome = ScanOutcome()
    started = time.monotonic()
    try:
        yield outcome
    except BaseException as exc:
        outcome.interrupted(exc)
        raise
    finally:
        seconds = time.monotonic() - started
        TALLY.inc(
            "regscan_images_scanned", kind=kind, outcome=outcome.outcome, reason=outcome.reason
        )
        TALLY.observe(
            "regscan_image_scan_duration_seconds", seconds, kind=kind, outcome=outcome.outcome
        )


def layer_lookup(hit: bool) -> None:
    TALLY.inc("regscan_layer_cache", result="hit" if hit else "miss")


def callback_attempt(status: int | None) -> None:
    """A delivery attempt: ``status`` is the receiver's answer, None when there was none."""
    if status is None:
        outcome = "error"
    elif 200 <= status < 300:
        outcome = "delivered"
    elif status >= 500 or status == 429:
        outcome = "retry"
    else:
        outcome = "rejected"
    TALLY.inc("regscan_callback_deliveries", outcome=outcome)


class CountedRequests(AuthBase):
    """Wraps a registry client's auth so that every answer is counted: requests by
    status, and the bytes announced by successful downloads.

    An auth object is the one hook the registry client offers on each request, so the
    scanner library stays free of metrics. The hook is registered after the wrapped
    auth's own, so a request repeated with a token is counted by its final answer.
    """

    def __init__(self, inner: AuthBase | None, registry: str) -> None:
        self.inner = inner
        self.registry = registry

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.inner is not None:
            request = self.inner(request)
        request.register_hook("response", self._count)
        return request

    def _count(self, response: requests.Response, **_kwargs: Any) -> requests.Response:
        TALLY.inc(
            "regscan_registry_requests", registry=self.registry, status=str(response.status_code)
        )
        length = response.headers.get("Content-Length", "")
        method = response.request.method if response.request is not None else ""
        if method == "GET" and 200 <= response.status_code < 300 and length.isdigit():
            TALLY.inc("regscan_registry_bytes", float(length), registry=self.registry)
        return response
