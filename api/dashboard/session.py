"""Who is looking at the dashboard, and that a form was sent by the dashboard itself.

Logging in with a user's password makes a session token (the same kind
``POST /authenticate`` gives, expiring after ``REGSCAN_TOKEN_TTL_SECONDS``); logging in
with an API token keeps that token. Either is kept in the ``regscan_session`` cookie:
HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it), Secure
when served over HTTPS. Roles are the API's: a viewer reads, an operator also starts
and stops scans.

Every form that changes something carries a CSRF token: an HMAC of the session token,
so it needs no storage and changes with each login. The login form, sent before there
is a session, is protected by a double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs, quote, unquote

from fastapi import Request, Response

from api.auth import Principal
from api.deps import app_state
from api.errors import ApiError

SESSION_COOKIE = "regscan_session"
LOGIN_CSRF_COOKIE = "regscan_login_csrf"
FLASH_COOKIE = "regscan_flash"
MAX_FORM_BYTES = 16 << 10
_CSRF_LABEL = b"regscan dashboard csrf v1"


class NeedLogin(Exception):
    """The page needs a logged-in user: send them to the login form."""


class PageError(Exception):
    """A page that cannot be shown (not found, not allowed), in words for a person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- the session ---------------------------------------------------------------------------


def session_token(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def principal(request: Request) -> Principal:
    """The logged-in caller; :class:`NeedLogin` when there is none or it expired."""
    token = session_token(request)
    if not token:
        raise NeedLogin
    try:
        return app_state(request).auth.principal_of_token(token)
    except ApiError:
        raise NeedLogin from None


def operator(request: Request) -> Principal:
    """The caller, who must be allowed to start and stop scans."""
    who = principal(request)
    if not who.may("operator"):
        raise PageError(403, f"role {who.role} may not start or stop scans")
    return who


def start_session(request: Request, response: Response, token: str, max_age: int | None) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


# -- CSRF ----------------------------------------------------------------------------------


def csrf_token(request: Request) -> str:
    """The token forms of this session carry."""
    return _mac(session_token(request))


def check_csrf(request: Request, form: dict[str, str]) -> None:
    token = session_token(request)
    if not token or not hmac.compare_digest(form.get("csrf", ""), _mac(token)):
        raise PageError(403, "this form is out of date or was not sent by the dashboard: reload")


def login_csrf(request: Request) -> str:
    """The login form's token: the one in the browser's cookie, or a new one."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def keep_login_csrf(request: Request, response: Response, value: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def check_login_csrf(request: Request, form: dict[str, str]) -> None:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(form.get("csrf", ""), cookie):
        raise PageError(403, "the login form is out of date: reload it and log in again")


def _mac(token: str) -> str:
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


# -- forms and messages ----------------------------------------------------------------------


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form (the only kind the dashboard sends), first value of each field.
    An empty body is an empty form (its CSRF check then fails)."""
    body = await request.body()
    kind = request.headers.get("content-type", "")
    if body and not kind.startswith("application/x-www-form-urlencoded"):
        raise PageError(415, "send the form from the dashboard")
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "the form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}


def flash(response: Response, message: str) -> None:
    """A message for the next page the browser shows (after a redirect)."""
    response.set_cookie(
        FLASH_COOKIE, quote(message[:300]), max_age=60, httponly=True, samesite="strict", path="/"
    )


def read_flash(request: Request) -> str:
    """The message waiting for this page; the page clears it (:func:`clear_flash`)."""
    return unquote(request.cookies.get(FLASH_COOKIE, ""))


def clear_flash(response: Response) -> None:
    response.delete_cookie(FLASH_COOKIE, path="/")


def safe_next(target: str) -> str:
    """Where to go after logging in: a path of this site only, never another site."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"
