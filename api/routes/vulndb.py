"""``GET /vulndb``: what vulnerability data the service holds and where it came from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import State, User
from core.views import ts
from models import VulnSource
from models import vuln_records as store

router = APIRouter()


@router.get("/vulndb")
def vulndb_status(_user: User, state: State) -> dict[str, Any]:
    """Sources with their last refresh, record counts per ecosystem, the data generation."""
    with state.sessions() as session:
        s = store.summary(session)
    return {
        "sources": [_source_view(src) for src in s["sources"]],
        "configuredSources": state.settings.vulndb_locations,
        "refreshSeconds": state.settings.vulndb_refresh_seconds,
        "records": s["records"],
        "withdrawn": s["withdrawn"],
        "recordsByEcosystem": s["by_ecosystem"],
        "generation": s["generation"],
        "lastChange": ts(s["changed_at"]),
        "imagesAwaitingMatch": s["images_due"],
    }


def _source_view(source: VulnSource) -> dict[str, Any]:
    return {
        "location": source.location,
        "lastRefresh": ts(source.refreshed_at),
        "etag": source.etag,
        "lastModified": source.last_modified,
        "records": source.records,
        "error": source.last_error,
    }
