"""What each dashboard page shows, gathered from the stored data as plain values for
the templates. Reads only; the pages module does the writing (through admission)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from api import freshness
from api.dashboard.charts import Chart, stacked_bars
from api.deps import AppState
from api.views import vulnerability_views
from core.views import job_view
from models import Image, JobKind, ScanJob, findings, fleet, image_scans, jobs
from models import callbacks as callback_store
from models.base import utcnow
from models.db import transaction
from scheduler.clock import plan

CHART_DAYS = 30
FAILURES_SINCE = timedelta(days=1)


@dataclass(frozen=True)
class Progress:
    """A job's progress as the bar shows it."""

    job: dict[str, Any]
    running: bool
    discovering: bool
    done: int
    total: int
    percent: int
    rate: float | None  # images per second since it started
    seconds_left: float | None


def progress_of(job: ScanJob | None) -> Progress | None:
    if job is None:
        return None
    view = job_view(job)
    running = not job.status.is_final
    done = job.images_scanned + job.images_failed + job.images_skipped
    total = job.images_total
    rate = seconds_left = None
    if running and job.started_at is not None and done:
        elapsed = (utcnow() - job.started_at).total_seconds()
        rate = done / elapsed if elapsed > 0 else None
        if rate:
            seconds_left = max(total - done, 0) / rate
    return Progress(
        job=view,
        running=running,
        discovering=running and job.kind.is_regular and job.discovered_at is None,
        done=done,
        total=total,
        percent=round(100 * done / total) if total else 0,
        rate=rate,
        seconds_left=seconds_left,
    )


def regular_progress(state: AppState, job_id: int | None = None) -> Progress | None:
    """A job's progress, or the regular scan's (running now, else the last)."""
    with state.sessions() as session:
        job = session.get(ScanJob, job_id) if job_id else jobs.latest_regular_job(session)
        return progress_of(job)


def vulndb(state: AppState) -> dict[str, Any]:
    with state.sessions() as session:
        fresh = fleet.vuln_freshness(session)
    return {
        **freshness.summary(fresh, state.settings),
        "generation": fresh.generation,
        "records": fresh.records,
        "changed_at": fresh.changed_at,
        "images_due": fresh.images_due,
        "sources": [freshness.source_view(s) for s in fresh.sources],
    }


def overview(state: AppState) -> dict[str, Any]:
    with transaction(state.sessions) as session:
        next_sweep = plan(session, state.settings).due
        backlog = fleet.ondemand_backlog(session)
        failing = fleet.failing_images(session)
        failed_jobs = [job_view(j) for j in fleet.failed_jobs(session, utcnow() - FAILURES_SINCE)]
    return {
        "next_sweep": next_sweep,
        "backlog": backlog,
        "failing_images": failing,
        "failed_jobs": failed_jobs,
        "vulndb": vulndb(state),
    }


def fleet_page(state: AppState) -> dict[str, Any]:
    with state.sessions() as session:
        worst = fleet.most_vulnerable(session)
        names = fleet.names_of(session, [image_id for image_id, _c in worst])
        series = fleet.findings_by_day(session, CHART_DAYS, utcnow())
        return {
            "totals": fleet.severity_totals(session),
            "widespread": fleet.widespread(session),
            "worst": [(image_id, names.get(image_id), counts) for image_id, counts in worst],
            "chart": chart(series),
            "days": CHART_DAYS,
        }


def chart(series: list[Any]) -> Chart:
    return stacked_bars(series)


def images_page(state: AppState, search: str, page: int, per_page: int) -> dict[str, Any]:
    with state.sessions() as session:
        rows, total = fleet.current_results(
            session, search, offset=(page - 1) * per_page, limit=per_page
        )
        ids = [image.id for _r, image in rows if image is not None]
        counts = fleet.severity_counts(session, ids)
    return {"rows": rows, "total": total, "by_image": counts}


def image_page(state: AppState, image_id: int) -> dict[str, Any] | None:
    with state.sessions() as session:
        image = session.get(Image, image_id)
        if image is None:
            return None
        found = findings.findings_of(session, [image.id]).get(image.id, [])
        return {
            "image": image,
            "current": fleet.results_of_image(session, image.id),
            "findings": vulnerability_views(found),
            "scans": fleet.scans_of_image(session, image.id),
        }


def jobs_page(state: AppState, kind: str | None, page: int, per_page: int) -> dict[str, Any]:
    with state.sessions() as session:
        rows, total = jobs.jobs_page(
            session,
            kind=JobKind(kind) if kind else None,
            offset=(page - 1) * per_page,
            limit=per_page,
        )
        return {"jobs": [job_view(j) for j in rows], "total": total}


def job_page(state: AppState, job_id: int) -> dict[str, Any] | None:
    with state.sessions() as session:
        job = session.get(ScanJob, job_id)
        if job is None:
            return None
        return {
            "progress": progress_of(job),
            "errors": image_scans.failed_items(session, job_id, limit=500),
            "callbacks": callback_store.deliveries(session, job_id),
        }


def first_tag(session: Session, image_id: int) -> tuple[str, str, str] | None:
    """(registry, repository, tag) of a tag an image is current for, to rescan it by."""
    for result in fleet.results_of_image(session, image_id):
        if result.tag:
            return result.registry_host, result.repository, result.tag
    return None


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """``3 min ago``, ``in 2 h``: a time relative to now, for people."""
    if moment is None:
        return "never"
    seconds = ((now or utcnow()) - moment).total_seconds()
    words = _span(abs(seconds))
    return f"{words} ago" if seconds >= 0 else f"in {words}"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"
