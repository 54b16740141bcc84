"""The registry scan endpoints of the reference API: scan, stop, results, progress."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from api import idempotency, views
from api.auth import Principal
from api.deps import (
    MAX_ID,
    Filter,
    IdempotencyKey,
    Offset,
    Operator,
    RawBody,
    State,
    User,
    Viewer,
    check_callbacks_enabled,
    requester,
)
from api.errors import ApiError
from api.openapi import body
from api.schemas import ScanRequest, parse_json_body
from core.reference import parse_registry
from core.views import job_view, ts
from models import JobKind, ScanJob, findings, image_scans, images, jobs, result_queries

router = APIRouter()


@router.post("/registry/scan", openapi_extra=body(ScanRequest, required=False))
def start_scan(
    caller: Operator,
    body: RawBody,
    state: State,
    response: Response,
    wait: bool = Query(False, description="Queue behind a running regular scan"),
    idempotency_key: str | None = IdempotencyKey,
) -> dict[str, Any]:
    payload = parse_json_body(body)
    if payload is not None and not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object, or empty to scan everything")
    request = ScanRequest.model_validate(payload or {})
    check_callbacks_enabled(state, request.callbackUrl)
    key_hash = idempotency.fingerprint("scan", payload, wait=wait)
    return idempotency.once(
        state,
        response,
        caller.team,
        idempotency_key,
        key_hash,
        lambda: job_view(_request_scan(state, caller, request, wait)),
    )


def _request_scan(state: State, caller: Principal, request: ScanRequest, wait: bool) -> ScanJob:
    admission, who = state.admission, requester(caller, request.callbackUrl)
    if request.tag is None:
        return admission.request_regular_all(who, wait=wait)
    if request.onDemandScan:
        return admission.request_on_demand(request.tag, who)
    return admission.request_regular_image(request.tag, who, wait=wait)


@router.post("/registry/stop")
def stop_scan(_caller: Operator, state: State) -> dict[str, Any]:
    job = state.admission.stop_regular()
    if job is None:
        return {"stopped": None, "message": "no regular scan is running"}
    return {"stopped": job_view(job), "message": f"regular scan {job.id} is stopping"}


FIELDS = Query(None, description="only these fields of each result (comma-separated or repeated)")
SortField = Literal["scanTime", "registry", "repository", "repo", "tag", "id"]


@router.get("/registry")
def list_results(
    _user: User,
    state: State,
    response: Response,
    flt: Filter,
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=250),
    sort: SortField | None = None,
    reverse: bool = False,
    compact: bool = Query(False, description="leave out packages, vulnerabilities and layers"),
    fields: list[str] | None = FIELDS,
) -> list[dict[str, Any]]:
    with state.sessions() as session:
        rows, total = result_queries.latest_results(
            session, flt, offset=offset, limit=limit, sort=sort, reverse=reverse
        )
        found_images = [image for _r, image in rows if image is not None]
        tags = images.tags_of(session, found_images)
        found = findings.findings_of(session, [image.id for image in found_images])
        body = [
            views.result_view(
                r,
                image,
                tags.get(image.id, []) if image else [],
                found.get(image.id, []) if image else [],
            )
            for r, image in rows
        ]
    response.headers["Total-Count"] = str(total)
    return [_shaped(entry, compact, _field_names(fields)) for entry in body]


# What ``compact`` leaves out: the long lists. Counts and the distribution stay.
COMPACT_DROPS = ("packages", "vulnerabilities", "layers")
MAX_FIELDS = 100


def _field_names(fields: list[str] | None) -> set[str]:
    values = fields or []
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    if len(names) > MAX_FIELDS:
        raise ApiError(400, f"fields names {len(names)} fields; at most {MAX_FIELDS} are accepted")
    return names


def _shaped(entry: dict[str, Any], compact: bool, fields: set[str]) -> dict[str, Any]:
    """A result as asked: only ``fields`` (names no result has are left out), and without
    the long lists when ``compact``."""
    if fields:
        entry = {k: v for k, v in entry.items() if k in fields}
    if compact:
        entry = {k: v for k, v in entry.items() if k not in COMPACT_DROPS}
    return entry


@router.get("/registry/names")
def image_names(
    _user: User,
    state: State,
    flt: Filter,
    offset: int = Query(0, ge=0),
    limit: int | None = Query(None, ge=1, description="at most this many names (default: all)"),
) -> list[str]:
    """The names of the images with a current result, as plain strings.

    No ``Total-Count`` header: the Prisma Cloud SDK reads one as the sign of a paged list
    and would ask again for pages this call does not page."""
    with state.sessions() as session:
        return result_queries.latest_names(session, flt, offset=offset, limit=limit)


@router.get("/registry/scans")
def list_scans(
    _user: User,
    state: State,
    response: Response,
    kind: Literal["regular-all", "regular-image", "regular-select", "on-demand"] | None = None,
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=250),
) -> list[dict[str, Any]]:
    with state.sessions() as session:
        page, total = jobs.jobs_page(
            session, kind=JobKind(kind) if kind else None, offset=offset, limit=limit
        )
    response.headers["Total-Count"] = str(total)
    return [job_view(j) for j in page]


@router.get("/registry/scans/{job_id}")
def get_scan(
    caller: Viewer, state: State, job_id: Annotated[int, Path(ge=1, le=MAX_ID)]
) -> dict[str, Any]:
    with state.sessions() as session:
        job = session.get(ScanJob, job_id)
        if job is None:
            raise ApiError(
                404, f"scan {job_id} does not exist; list scans with GET /registry/scans"
            )
        errors = [views.item_error_view(i) for i in image_scans.failed_items(session, job_id)]
        # Where a team's callbacks go, and what its receivers answered, is its own
        # business (and an admin's).
        mine = caller.may("admin") or caller.team == job.team
        callbacks = views.callback_views(session, job_id) if mine else []
    return {**job_view(job), "errors": errors, "callbacks": callbacks}


@router.get("/registry/progress")
def progress(
    _user: User,
    state: State,
    onDemand: bool = False,
    registry: str | None = None,
    repo: str | None = None,
    tag: str = "",
    digest: str = "",
) -> list[dict[str, Any]]:
    with state.sessions() as session:
        if not onDemand:
            job = jobs.latest_regular_job(session)
            return [_progress_entry(job, "regular")]
        if not repo or not (tag or digest):
            raise ApiError(400, "on-demand progress needs repo and either tag or digest")
        try:
            host = parse_registry(registry).host if registry else None
        except ValueError as exc:
            raise ApiError(400, f"registry: {exc}") from None
        found_jobs = image_scans.on_demand_jobs_for(session, host, repo, tag, digest)
        return [_progress_entry(j, "onDemand") for j in found_jobs]


def _progress_entry(job: ScanJob | None, kind: str) -> dict[str, Any]:
    ongoing = job is not None and not job.status.is_final
    where = "registries in scope" if job is None or job.target is None else job.target_name
    discovering = job is not None and job.discovered_at is None and ongoing
    total = job.images_total if job else 0
    done = (job.images_scanned + job.images_failed + job.images_skipped) if job else 0
    return {
        "discovery": {
            "id": str(job.id) if job else "",
            "type": kind,
            "discovery": discovering,
            "total": total,
            "scanned": total if not discovering else 0,
            "title": f"Step 1/2 discovering tags in {where}: found {total} images",
        },
        "imageScan": {
            "id": str(job.id) if job else "",
            "type": kind,
            "discovery": False,
            "total": total,
            "scanned": done,
            "title": f"Step 2/2 scanning images in {where}: scanned {done}/{total} images",
        },
        "isScanOngoing": ongoing,
        "onDemand": kind == "onDemand",
        "status": job.status.value if job else None,
        "specScanStartTime": ts(job.started_at) if job else None,
    }


@router.get("/statuses/registry")
def registry_status(_user: User, state: State) -> dict[str, Any]:
    """The last regular scan: whether it completed, its counts, and what went wrong, per
    image and per registry whose images could not be listed (its discovery failed)."""
    with state.sessions() as session:
        job = jobs.latest_regular_job(session)
        errors = (
            [views.item_error_view(i) for i in image_scans.failed_items(session, job.id)]
            if job
            else []
        )
    job_errors = views.job_error_views(job.error if job else None)
    return {
        "err": (job.error or "") if job else "",
        "discoveryFailed": sum(1 for e in job_errors if e["status"] == "discovery-failed"),
        "completed": job is None or job.status.is_final,
        "status": job.status.value if job else None,
        "scanID": job.id if job else None,
        "total": job.images_total if job else 0,
        "scanned": job.images_scanned if job else 0,
        "failed": job.images_failed if job else 0,
        "time": ts(job.finished_at or job.started_at) if job else None,
        "errors": job_errors + errors,
    }
