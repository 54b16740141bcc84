"""How current the vulnerability data is, in words: shared by ``GET /vulndb``, the
dashboard and ``/metrics``, so that all three say the same thing.

Where the data comes from (``mode``): the configured sources, the public OSV exports of
the ecosystems the stored images hold (the default), or nowhere. Each source is ``ok``,
``pending`` (never fetched yet) or ``failing`` (its last refresh failed, e.g. offline);
a failing source keeps the records it gave before, and the service keeps matching with
them.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings
from core.views import ts
from models import VulnSource
from models.fleet import VulnFreshness


def mode(settings: Settings) -> str:
    if settings.vulndb_locations:
        return "configured"
    return "default" if settings.vulndb_osv_url else "off"


def source_status(source: VulnSource) -> str:
    if source.last_error:
        return "failing"
    return "pending" if source.refreshed_at is None else "ok"


def summary(freshness: VulnFreshness, settings: Settings) -> dict[str, Any]:
    """``status`` (ok, pending, failing, empty, off) and a ``message`` for people."""
    statuses = [source_status(s) for s in freshness.sources]
    failing = [s for s in freshness.sources if source_status(s) == "failing"]
    how = mode(settings)
    if failing:
        status = "failing"
        first = failing[0]
        message = (
            f"{len(failing)} of {len(statuses)} vulnerability data sources failing "
            f"({first.location}: {first.last_error}); matching goes on with the "
            f"{freshness.records} records already stored"
        )
    elif "pending" in statuses:
        status, message = "pending", "vulnerability data is being fetched for the first time"
    elif freshness.records:
        status, message = "ok", f"{freshness.records} records, every source refreshed"
    elif how == "off":
        status = "off"
        message = "no vulnerability data: set REGSCAN_VULNDB_SOURCES or REGSCAN_VULNDB_OSV_URL"
    else:
        status = "empty"
        message = "no vulnerability data yet: it is fetched once images are scanned"
    return {"mode": how, "status": status, "message": message}


def source_view(source: VulnSource) -> dict[str, Any]:
    return {
        "location": source.location,
        "status": source_status(source),
        "lastRefresh": ts(source.refreshed_at),
        "etag": source.etag,
        "lastModified": source.last_modified,
        "records": source.records,
        "error": source.last_error,
    }
