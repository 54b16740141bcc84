"""The Harbor pluggable scanner adapter, under ``/harbor``: Harbor registers
``https://REGSCAN/harbor`` as a scanner and calls ``/harbor/api/v1/...``.

A scan request becomes an on-demand scan of the artifact's digest, with the pull
credentials Harbor gives handed to the worker through Redis for that scan alone (see
``core/keys.py``); they are never stored in the database or logged. The image must be
inside the registry configuration, as for any on-demand scan: a specification must
name Harbor's registry as Harbor names it in ``registry.url``. Reports are made from
what the scan stored.

Harbor authenticates with the header it is configured with: ``Authorization`` (Basic
or Bearer, as for the rest of the API) or ``X-ScannerAdapter-API-Key`` (an API token).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError, field_validator

from api import harbor_reports as reports
from api.auth import Principal
from api.deps import RawBody, State, authorize
from api.errors import ApiError, err
from api.schemas import parse_json_body
from core.reference import ImageRef, parse_registry, validate_digest, validate_repository
from core.requester import HARBOR_SOURCE, Requester
from models import JobKind, JobStatus, ScanJob, findings, result_queries
from models import vuln_records as vulndb
from models.base import utcnow
from scheduler.errors import OutOfScope

# Left out of regscan's own OpenAPI document: this API is the one the pluggable scanner
# spec describes, with its own media types, and tests/test_harbor.py checks the answers
# against that spec's document.
router = APIRouter(prefix="/harbor/api/v1", include_in_schema=False)

REFRESH_AFTER_SECONDS = 5
MAX_AUTHORIZATION_CHARS = 8192
SOURCE = HARBOR_SOURCE


def _caller(role: str):
    def dependency(request: Request, state: State) -> Principal:
        key = request.headers.get("x-scanneradapter-api-key", "").strip()
        if key and not request.headers.get("authorization"):
            principal = state.auth.principal_of_token(key)
        else:
            principal = state.auth.principal_of(request)
        return authorize(principal, role)

    return dependency


Reader = Annotated[Principal, Depends(_caller("viewer"))]
Scanner = Annotated[Principal, Depends(_caller("operator"))]


# -- the scan request ------------------------------------------------------------------


class _Lenient(BaseModel):
    # The spec lets Harbor add fields (v1.2 added enabled_capabilities): unknown ones are
    # ignored here, unlike in the reference API's bodies.
    model_config = ConfigDict(extra="ignore")


class HarborRegistry(_Lenient):
    url: StrictStr
    authorization: StrictStr = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must be the registry's http:// or https:// base URL")
        parse_registry(v)
        return v

    @field_validator("authorization")
    @classmethod
    def _authorization(cls, v: str) -> str:
        # A header value: printable ASCII only, so nothing can be smuggled into a request.
        if len(v) > MAX_AUTHORIZATION_CHARS or any(not 32 <= ord(c) < 127 for c in v):
            raise ValueError(
                f"must be an HTTP Authorization value (printable ASCII, at most "
                f"{MAX_AUTHORIZATION_CHARS} characters), e.g. Basic BASE64"
            )
        return v


class HarborArtifact(_Lenient):
    repository: StrictStr
    digest: StrictStr
    tag: StrictStr = ""
    mime_type: StrictStr = ""

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        return validate_repository(v)

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        return validate_digest(v)


class HarborScanRequest(_Lenient):
    registry: HarborRegistry
    artifact: HarborArtifact


@router.get("/metadata")
def metadata(_caller: Reader, state: State) -> JSONResponse:
    with state.sessions() as session:
        changed_at = vulndb.summary(session)["changed_at"]
    return JSONResponse(reports.metadata(changed_at), media_type=reports.METADATA_TYPE)


@router.post("/scan")
def accept_scan(caller: Scanner, state: State, body: RawBody) -> JSONResponse:
    """Queue an on-demand scan of the artifact; 202 with the id to ask for its report."""
    payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise ApiError(
            400, 'body must be {"registry": {"url", "authorization"}, "artifact": {...}}'
        )
    request = HarborScanRequest.model_validate(payload)
    artifact = request.artifact
    if artifact.mime_type and artifact.mime_type not in reports.CONSUMES:
        raise ApiError(
            422,
            f"artifact.mime_type {artifact.mime_type!r} is not scanned here; "
            f"this scanner reads {', '.join(reports.CONSUMES)}",
        )
    ref = _image_ref(request)
    who = Requester(caller.name, caller.team, SOURCE)
    try:
        job = state.admission.request_on_demand(
            ref, who, pull_authorization=request.registry.authorization
        )
    except OutOfScope as exc:
        raise ApiError(422, f"registry.url: {exc}") from None
    return JSONResponse({"id": str(job.id)}, status_code=202, media_type=reports.SCAN_RESPONSE_TYPE)


def _image_ref(request: HarborScanRequest) -> ImageRef:
    a = request.artifact
    try:
        return ImageRef(
            registry=request.registry.url, repo=a.repository, tag=a.tag, digest=a.digest
        )
    except ValidationError as exc:
        raise ApiError(422, f"artifact: {exc.errors()[0]['msg']}") from None


# -- the report ---------------------------------------------------------------------------


@router.get("/scan/{scan_id}/report")
def get_report(
    scan_id: str,
    request: Request,
    _caller: Reader,
    state: State,
    accept: str | None = Header(None),
    sbom_media_type: str | None = None,
) -> Response:
    """302 with Refresh-After while the scan runs; then the report Accept asks for."""
    wanted = _report_type(accept)
    if wanted == reports.SBOM_REPORT:
        _check_sbom_type(sbom_media_type)
    with state.sessions() as session:
        job = _job(session, scan_id)
        if not job.status.is_final:
            return Response(status_code=302, headers={"Refresh-After": str(REFRESH_AFTER_SECONDS)})
        if job.status is not JobStatus.COMPLETED:
            why = f"scan {scan_id} {job.status.value}: {job.error or 'no reason given'}"
            return err(500, why, None, request)
        body = _report(session, job, wanted)
    return JSONResponse(body, media_type=wanted)


def _report(session: Any, job: ScanJob, wanted: str) -> dict[str, Any]:
    """The report of a completed scan, from the images and findings it stored."""
    stored = result_queries.images_of_job(session, job.id)
    found = findings.findings_of(session, [image.id for _r, image in stored])
    target = job.target or {}
    if wanted != reports.SBOM_REPORT:
        every = [f for _r, image in stored for f in found.get(image.id, [])]
        return reports.vulnerability_report(target, [i for _r, i in stored], every, utcnow())
    if not stored:
        raise ApiError(404, f"scan {job.id} stored no image to describe")
    with_findings = [(r, i, found.get(i.id, [])) for r, i in stored]
    return reports.sbom_report(target, with_findings, utcnow())


def _job(session: Any, scan_id: str) -> ScanJob:
    job = session.get(ScanJob, int(scan_id)) if scan_id.isdigit() and len(scan_id) < 19 else None
    if job is None or job.kind is not JobKind.ON_DEMAND or job.source != SOURCE:
        raise ApiError(404, f"no scan request {scan_id!r}: ids come from POST /harbor/api/v1/scan")
    return job


_PRODUCED = (reports.VULNERABILITY_REPORT, reports.HARBOR_REPORT_1_0, reports.SBOM_REPORT)


def _report_type(accept: str | None) -> str:
    """The report Accept names (the vulnerability report for none or ``*/*``)."""
    asked = [part.strip() for part in (accept or "").split(",") if part.strip()]
    if not asked or any(a.split(";")[0].strip() in ("*/*", "application/*") for a in asked):
        return reports.VULNERABILITY_REPORT
    for a in asked:
        for produced in _PRODUCED:
            if _same_type(a, produced):
                return produced
    raise ApiError(
        400, f"Accept {accept!r} names no report made here; ask for one of {', '.join(_PRODUCED)}"
    )


def _same_type(a: str, b: str) -> bool:
    def norm(t: str) -> str:
        return "".join(t.lower().split())

    return norm(a) == norm(b)


def _check_sbom_type(sbom_media_type: str | None) -> None:
    if sbom_media_type != reports.CYCLONEDX:
        raise ApiError(
            400,
            f"sbom_media_type {sbom_media_type!r}: this scanner makes {reports.CYCLONEDX} "
            "SBOMs; add ?sbom_media_type=application/vnd.cyclonedx+json",
        )
