"""Bulk rescans: a chosen set of images, or a campaign by query over stored inventories
("every image with openssl older than 3.0.13", "every image affected by CVE-X").

Each runs as ONE regular scan, under the same one-at-a-time rule as any other."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import StrictStr, model_validator

from api.deps import Operator, RawBody, State
from api.errors import ApiError
from api.openapi import body
from api.schemas import Strict, parse_json_body
from core.reference import ImageRef
from core.requester import Requester
from core.views import job_view
from models import result_queries
from scanner.vulns import versions

router = APIRouter()
MAX_SELECTION = 10_000

_OS_SCHEMES = {"debian": "dpkg", "ubuntu": "dpkg", "alpine": "apk"}
_LANGUAGE_SCHEMES = {"python": "pep440", "nodejs": "semver", "go": "go", "jar": "maven"}


class SelectItem(Strict):
    tag: ImageRef
    onDemandScan: bool = False

    @model_validator(mode="after")
    def _regular_only(self) -> SelectItem:
        if self.onDemandScan:
            raise ValueError("a selection is one regular scan: drop onDemandScan")
        return self


class Campaign(Strict):
    package: StrictStr | None = None
    introduced: StrictStr | None = None  # affected from this version on (inclusive)
    fixed: StrictStr | None = None  # affected before this version (exclusive)
    vulnerability: StrictStr | None = None

    @model_validator(mode="after")
    def _one_query(self) -> Campaign:
        if (self.package is None) == (self.vulnerability is None):
            raise ValueError('give exactly one of "package" or "vulnerability"')
        if self.package is None and (self.introduced or self.fixed):
            raise ValueError('"introduced" and "fixed" go with "package"')
        return self


@router.post("/registry/scan/select", openapi_extra=body(list[SelectItem]))
def scan_selection(
    caller: Operator, state: State, body: RawBody, wait: bool = Query(False)
) -> dict[str, Any]:
    """The reference body: a JSON array of scan requests, each ``{"tag": {...}}``."""
    payload = parse_json_body(body)
    if not isinstance(payload, list) or not payload:
        raise ApiError(400, 'body must be a non-empty JSON array of {"tag": {...}} objects')
    if len(payload) > MAX_SELECTION:
        raise ApiError(400, f"a selection holds at most {MAX_SELECTION} images")
    items = [SelectItem.model_validate(x) for x in payload]
    refs = [i.tag for i in items]
    selection = {"images": [ref.as_target() for ref in refs]}
    who = Requester(caller.name, caller.team)
    job = state.admission.request_selection(refs, selection, who, wait=wait)
    return job_view(job)


@router.post("/registry/scan/campaign", openapi_extra=body(Campaign))
def scan_campaign(
    caller: Operator, state: State, body: RawBody, wait: bool = Query(False)
) -> dict[str, Any]:
    """Rescan every image whose stored inventory matches the query, as one regular scan."""
    query = Campaign.model_validate(parse_json_body(body) or {})
    with state.sessions() as session:
        if query.package is not None:
            held = result_queries.holders_of(session, query.package)
            found = {(h.registry_host, h.repository, h.tag) for h in held if _in_range(h, query)}
        else:
            found = set(result_queries.affected_by(session, query.vulnerability or ""))
    refs = [ImageRef(registry=host, repo=repo, tag=tag) for host, repo, tag in sorted(found)]
    selection = {"query": query.model_dump(exclude_none=True)}
    who = Requester(caller.name, caller.team, source="campaign")
    job = state.admission.request_selection(refs, selection, who, wait=wait, strict=False)
    return job_view(job)


def _in_range(held: result_queries.HeldPackage, query: Campaign) -> bool:
    if not (query.introduced or query.fixed):
        return True
    scheme = _scheme(held)
    try:
        if query.introduced and versions.compare(scheme, held.version, query.introduced) < 0:
            return False
        return not (query.fixed and versions.compare(scheme, held.version, query.fixed) >= 0)
    except versions.InvalidVersion:
        return False  # a version this scheme cannot order is not in any range


def _scheme(held: result_queries.HeldPackage) -> str:
    if held.type == "package":
        return _OS_SCHEMES.get(held.os_distro, "rpm")
    return _LANGUAGE_SCHEMES.get(held.type, "semver")
