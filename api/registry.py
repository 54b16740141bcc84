"""The registry scan endpoints of the reference API: scan, stop, results, progress."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from api import enqueue, idempotency, views
from api.auth import Principal
from api.errors import ApiError
from api.schemas import ScanRequest, parse_json_body
from api.state import Operator, RawBody, State, User
from core.reference import parse_registry, validate_repository, validate_tag
from core.views import job_view, ts
from models import JobKind, ScanJob, queries

router = APIRouter()


@router.post("/registry/scan")
def start_scan(
    body: RawBody,
    caller: Operator,
    state: State,
    response: Response,
    wait: bool = Query(False, description="Queue behind a running regular scan"),
    idempotency_key: str | None = enqueue.IdempotencyKey,
) -> dict[str, Any]:
    payload = parse_json_body(body)
    if payload is not None and not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object, or empty to scan everything")
    request = ScanRequest.model_validate(payload or {})
    enqueue.check_callbacks_enabled(state, request.callbackUrl)
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
    sched, user = state.scheduler, caller.name
    owner = {"team": caller.team, "callback_url": request.callbackUrl}
    if request.tag is None:
        return sched.request_regular_all(user, wait=wait, **owner)
    ref = enqueue.image_ref(request.tag)
    if request.onDemandScan:
        return sched.request_on_demand(ref, user, **owner)
    return sched.request_regular_image(ref, user, wait=wait, **owner)


@router.post("/registry/stop")
def stop_scan(_caller: Operator, state: State) -> dict[str, Any]:
    job = state.scheduler.stop_regular()
    if job is None:
        return {"stopped": None, "message": "no regular scan is running"}
    return {"stopped": job_view(job), "message": f"regular scan {job.id} is stopping"}


SortField = Literal["scanTime", "registry", "repository", "repo", "tag", "id"]


def result_filter(
    name: str | None = Query(None, description="REGISTRY/REPO:TAG"),
    registry: str | None = None,
    repository: str | None = None,
    id: str | None = Query(None, description="image id (config digest) or manifest digest"),
    cve: str | None = Query(None, description="only images affected by this vulnerability"),
    package: str | None = Query(None, description="only images holding this package"),
    packageVersion: str | None = Query(None, description="with package: this version only"),
) -> queries.ResultFilter:
    """The filters shared by the result list and its exports."""
    if packageVersion is not None and package is None:
        raise ApiError(400, "packageVersion needs package: add ?package=NAME")
    try:
        host = parse_registry(registry).host if registry else None
        tag = None
        if name:
            host, repository, tag = _split_name(name)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return queries.ResultFilter(
        registry=host,
        repository=repository,
        tag=tag,
        image_id=id,
        cve=cve,
        package=package,
        package_version=packageVersion,
    )


Filter = Annotated[queries.ResultFilter, Depends(result_filter)]


@router.get("/registry")
def list_results(
    _user: User,
    state: State,
    response: Response,
    flt: Filter,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=250),
    sort: SortField | None = None,
    reverse: bool = False,
) -> list[dict[str, Any]]:
    with state.sessions() as session:
        rows, total = queries.latest_results(
            session, flt, offset=offset, limit=limit, sort=sort, reverse=reverse
        )
        images = [image for _r, image in rows if image is not None]
        tags = queries.tags_of(session, images)
        found = queries.findings_of(session, [image.id for image in images])
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
    return body


def _split_name(name: str) -> tuple[str, str, str | None]:
    """``REGISTRY/REPO[:TAG]`` into its parts; no tag means every tag of the repository."""
    registry, slash, rest = name.partition("/")
    if not slash or not rest:
        raise ValueError(f"name {name!r} is not a full image name: use REGISTRY/REPO:TAG")
    repo, tag = rest, None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = rest.rsplit(":", 1)
        validate_tag(tag)
    return parse_registry(registry).host, validate_repository(repo), tag


@router.get("/registry/scans")
def list_scans(
    _user: User,
    state: State,
    response: Response,
    kind: Literal["regular-all", "regular-image", "regular-select", "on-demand"] | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=250),
) -> list[dict[str, Any]]:
    with state.sessions() as session:
        jobs, total = queries.jobs_page(
            session, kind=JobKind(kind) if kind else None, offset=offset, limit=limit
        )
    response.headers["Total-Count"] = str(total)
    return [job_view(j) for j in jobs]


@router.get("/registry/scans/{job_id}")
def get_scan(job_id: int, _user: User, state: State) -> dict[str, Any]:
    with state.sessions() as session:
        job = session.get(ScanJob, job_id)
        if job is None:
            raise ApiError(
                404, f"scan {job_id} does not exist; list scans with GET /registry/scans"
            )
        errors = [views.item_error_view(i) for i in queries.failed_items(session, job_id)]
        callbacks = enqueue.callback_views(session, job_id)
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
            job = queries.latest_regular_job(session)
            return [_progress_entry(job, "regular")]
        if not repo or not (tag or digest):
            raise ApiError(400, "on-demand progress needs repo and either tag or digest")
        host = parse_registry(registry).host if registry else None
        jobs = queries.on_demand_jobs_for(session, host, repo, tag, digest)
        return [_progress_entry(j, "onDemand") for j in jobs]


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
    with state.sessions() as session:
        job = queries.latest_regular_job(session)
        errors = (
            [views.item_error_view(i) for i in queries.failed_items(session, job.id)] if job else []
        )
    return {
        "completed": job is None or job.status.is_final,
        "status": job.status.value if job else None,
        "scanID": job.id if job else None,
        "total": job.images_total if job else 0,
        "scanned": job.images_scanned if job else 0,
        "failed": job.images_failed if job else 0,
        "time": ts(job.finished_at or job.started_at) if job else None,
        "errors": errors,
    }
