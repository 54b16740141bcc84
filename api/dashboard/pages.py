"""The dashboard's routes: pages to read (any role), forms to act (operators), login.

Pages are ``GET``; everything that changes something is a ``POST`` form carrying a
CSRF token, answered with a redirect and a one-time message. A viewer sees no button to
start, stop or rescan, and the same ``POST`` is refused with 403 if sent anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, client_of
from api.dashboard import panels, session
from api.dashboard.session import NeedLogin, PageError
from api.deps import AppState, app_state
from api.errors import ApiError
from core.reference import ImageRef
from core.requester import Requester
from models.db import transaction
from scheduler.errors import (
    Busy,
    NoSpecifications,
    OutOfScope,
    ScanConflict,
    TeamOverLimit,
    Unavailable,
)

HERE = Path(__file__).parent
PER_PAGE = 50
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
KINDS = Literal["regular-all", "regular-image", "regular-select", "on-demand"]
# What a page may load and where its forms may go: this site only. No inline script
# or style (htmx is told not to add its own), no framing (the buttons cannot be
# clicked through another site's page). Caching is refused for every answer by
# api/guards.py.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Refusals of the scheduler, said to a person as they are.
REFUSED = (ScanConflict, NoSpecifications, OutOfScope, TeamOverLimit, Busy, Unavailable)

templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["ago"] = panels.ago
router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="ui-static")
    app.include_router(router)
    app.add_exception_handler(NeedLogin, _to_login)
    app.add_exception_handler(PageError, _error_page)


# -- rendering -------------------------------------------------------------------------------


def render(
    request: Request, template: str, who: Principal | None, status: int = 200, **context: Any
) -> Response:
    # A live part fetched in the background must not swallow the message meant for the
    # page the browser is about to show.
    fragment = template.startswith("_")
    flash = "" if fragment else session.read_flash(request)
    base = {
        "who": who,
        "can_operate": who is not None and who.may("operator"),
        "csrf": session.csrf_token(request) if who else "",
        "flash": flash,
        "path": request.url.path,
    }
    response = templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status
    )
    response.headers.update(SECURITY_HEADERS)
    if flash:
        session.clear_flash(response)
    return response


async def _to_login(request: Request, _exc: Exception) -> Response:
    if request.headers.get("hx-request"):
        # A live part polling after the session expired: htmx takes the whole page there.
        return Response(status_code=200, headers={"HX-Redirect": "/ui/login"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


async def _error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    try:
        who: Principal | None = session.principal(request)
    except NeedLogin:
        who = None
    return render(request, "error.html", who, exc.status, message=exc.message)


def _state(request: Request) -> AppState:
    return app_state(request)


# -- pages -------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview(request: Request) -> Response:
    who = session.principal(request)
    state = _state(request)
    return render(
        request,
        "overview.html",
        who,
        progress=panels.regular_progress(state),
        **panels.overview(state),
    )


@router.get("/ui/fragments/progress", response_class=HTMLResponse)
def progress_fragment(request: Request, job: int | None = Query(None, ge=1, le=MAX_ID)) -> Response:
    """The live part of the overview and job pages, fetched again by htmx."""
    who = session.principal(request)
    progress = panels.regular_progress(_state(request), job)
    return render(request, "_progress.html", who, progress=progress, job_id=job)


@router.get("/ui/fleet", response_class=HTMLResponse)
def fleet(request: Request) -> Response:
    who = session.principal(request)
    return render(request, "fleet.html", who, **panels.fleet_page(_state(request)))


@router.get("/ui/images", response_class=HTMLResponse)
def images(
    request: Request,
    q: str = Query("", max_length=300),
    page: int = Query(1, ge=1, le=100_000),
) -> Response:
    who = session.principal(request)
    data = panels.images_page(_state(request), q, page, PER_PAGE)
    pages = max(1, -(-data["total"] // PER_PAGE))
    return render(request, "images.html", who, q=q, page=page, pages=pages, **data)


@router.get("/ui/images/{image_id}", response_class=HTMLResponse)
def image(request: Request, image_id: int = PathParam(ge=1, le=MAX_ID)) -> Response:
    who = session.principal(request)
    data = panels.image_page(_state(request), image_id)
    if data is None:
        raise PageError(404, f"there is no image {image_id}: it may have been deleted")
    return render(request, "image.html", who, **data)


@router.get("/ui/jobs", response_class=HTMLResponse)
def job_list(
    request: Request, kind: KINDS | None = None, page: int = Query(1, ge=1, le=100_000)
) -> Response:
    who = session.principal(request)
    data = panels.jobs_page(_state(request), kind, page, PER_PAGE)
    pages = max(1, -(-data["total"] // PER_PAGE))
    return render(request, "jobs.html", who, kind=kind, page=page, pages=pages, **data)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: int = PathParam(ge=1, le=MAX_ID)) -> Response:
    who = session.principal(request)
    data = panels.job_page(_state(request), job_id)
    if data is None:
        raise PageError(404, f"there is no scan {job_id}")
    return render(request, "job.html", who, job_id=job_id, **data)


# -- logging in and out ------------------------------------------------------------------------


@router.get("/ui/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = Query("/", max_length=2000)) -> Response:
    return _login_page(request, session.safe_next(next))


def _login_page(request: Request, target: str, error: str = "", status: int = 200) -> Response:
    token = session.login_csrf(request)
    response = render(
        request, "login.html", None, status, login_csrf=token, next=target, error=error
    )
    session.keep_login_csrf(request, response, token)
    return response


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await session.read_form(request)
    session.check_login_csrf(request, form)
    target = session.safe_next(form.get("next", "/"))
    auth, settings = _state(request).auth, _state(request).settings
    api_token = form.get("token", "").strip()
    try:
        if api_token:
            _bounded(api_token, 512, "the token")
            await run_in_threadpool(auth.principal_of_token, api_token)
            token, max_age = api_token, None
        else:
            user, password = form.get("username", "").strip(), form.get("password", "")
            _bounded(user, 128, "the user name")
            _bounded(password, 1024, "the password")
            client = client_of(request)
            token = await run_in_threadpool(auth.issue_token, user, password, client)
            max_age = settings.token_ttl_seconds
    except ApiError as exc:
        return _login_page(request, target, exc.message, exc.status)
    response = RedirectResponse(target, status_code=303)
    session.start_session(request, response, token, max_age)
    return response


def _bounded(value: str, limit: int, what: str) -> None:
    if not value:
        raise ApiError(401, f"give {what}")
    if len(value) > limit:
        raise ApiError(400, f"{what} is too long")


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    session.principal(request)  # who asks, before reading what they send
    form = await session.read_form(request)
    session.check_csrf(request, form)
    await run_in_threadpool(_state(request).auth.end_session, session.session_token(request))
    response = RedirectResponse("/ui/login", status_code=303)
    session.end_session(response)
    return response


# -- acting (operators) ------------------------------------------------------------------------


@router.post("/ui/scan")
async def start_scan(request: Request) -> Response:
    """Start a regular scan of everything in scope."""

    def start(state: AppState, who: Principal) -> str:
        job = state.admission.request_regular_all(_requester(who))
        return f"regular scan {job.id} started"

    return await _act(request, start, "/")


@router.post("/ui/stop")
async def stop_scan(request: Request) -> Response:
    def stop(state: AppState, _who: Principal) -> str:
        job = state.admission.stop_regular()
        return f"regular scan {job.id} is stopping" if job else "no regular scan is running"

    return await _act(request, stop, "/")


@router.post("/ui/images/{image_id}/rescan")
async def rescan(request: Request, image_id: int = PathParam(ge=1, le=MAX_ID)) -> Response:
    """An on-demand scan of a tag the image is current for."""

    def scan_again(state: AppState, who: Principal) -> str:
        with transaction(state.sessions) as db:
            found = panels.first_tag(db, image_id)
        if found is None:
            raise PageError(404, "this image has no tag to scan it by")
        host, repo, tag = found
        ref = ImageRef(registry=host, repo=repo, tag=tag)
        job = state.admission.request_on_demand(ref, _requester(who))
        return f"on-demand scan {job.id} of {host}/{repo}:{tag} queued"

    return await _act(request, scan_again, f"/ui/images/{image_id}")


async def _act(
    request: Request, action: Callable[[AppState, Principal], str], back: str
) -> Response:
    """Check the caller, the form and the role, do it, and go back with a message saying
    how it went. The caller is known before the form is read, as for every API route."""
    who = session.principal(request)
    form = await session.read_form(request)
    session.check_csrf(request, form)
    session.operator(request)
    try:
        message = await run_in_threadpool(action, _state(request), who)
    except REFUSED as exc:
        message = str(exc)
    except (ValidationError, ValueError) as exc:
        message = f"cannot scan it: {exc}"
    response = RedirectResponse(back, status_code=303)
    session.flash(response, message)
    return response


def _requester(who: Principal) -> Requester:
    return Requester(who.name, who.team, "dashboard")
