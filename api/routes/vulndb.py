"""``GET /vulndb``: what vulnerability data the service holds, where it came from, and
whether its sources are refreshing (``status``: ok, pending, failing, empty, off)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api import freshness
from api.deps import State, User
from core.views import ts
from models import fleet
from models import vuln_records as store

router = APIRouter()


@router.get("/vulndb")
def vulndb_status(_user: User, state: State) -> dict[str, Any]:
    """Sources with their last refresh, record counts per ecosystem, the data generation."""
    with state.sessions() as session:
        s = store.summary(session)
        fresh = fleet.vuln_freshness(session)
    settings = state.settings
    return {
        **freshness.summary(fresh, settings),
        "sources": [freshness.source_view(src) for src in s["sources"]],
        "configuredSources": settings.vulndb_locations,
        "osvBaseUrl": settings.vulndb_osv_url if freshness.mode(settings) == "default" else "",
        "refreshSeconds": settings.vulndb_refresh_seconds,
        "records": s["records"],
        "withdrawn": s["withdrawn"],
        "recordsByEcosystem": s["by_ecosystem"],
        "generation": s["generation"],
        "lastChange": ts(s["changed_at"]),
        "imagesAwaitingMatch": s["images_due"],
    }
