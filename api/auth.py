"""HTTP Basic and bearer-token authentication, and the role each caller holds.

Passwords are stored as argon2 hashes. Verifying argon2 costs tens of
milliseconds by design, so a successful Basic check is remembered for a minute,
keyed by a SHA-256 of the credentials (never the password itself).

Bearer tokens are either session tokens from ``POST /authenticate`` or API tokens
(``rst_...``) that an admin issued to a team's service; both are stored as SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from models import api_tokens, users
from models.base import utcnow
from models.db import transaction

_hasher = PasswordHasher()
BASIC_CACHE_SECONDS = 60.0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="regscan"'}

# Each role may do what the roles after it may, and more.
ROLES = ("admin", "operator", "viewer")
ADMIN_TEAM = "admin"
API_TOKEN_PREFIX = "rst_"


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user or an API token, with its team and role."""

    name: str
    team: str
    role: str

    def may(self, needed: str) -> bool:
        """Whether this role includes ``needed``."""
        return self.role in ROLES and ROLES.index(self.role) <= ROLES.index(needed)


def new_api_token() -> tuple[str, str]:
    """A fresh API token and the SHA-256 that is all the database keeps of it."""
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, _sha256(token)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def ensure_admin(sessions: sessionmaker[Session], username: str, password: str | None) -> None:
    """Create the first admin, or reset its password to the configured one."""
    with transaction(sessions) as session:
        user = users.get_user(session, username)
        if user is not None and (
            password is None or password_matches(user.password_hash, password)
        ):
            return
        if password is None:
            raise RuntimeError(
                f"no user {username!r} exists yet: set REGSCAN_ADMIN_PASSWORD to create it"
            )
        users.put_user(session, username, hash_password(password))


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], token_ttl_seconds: int) -> None:
        self.sessions = sessions
        self.token_ttl = timedelta(seconds=token_ttl_seconds)
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._guard = threading.Lock()

    def issue_token(self, username: str, password: str) -> str:
        with transaction(self.sessions) as session:
            user = users.get_user(session, username)
            if user is None or not password_matches(user.password_hash, password):
                raise ApiError(401, "invalid username or password")
            token = secrets.token_urlsafe(32)
            users.add_token(session, user, _sha256(token), utcnow() + self.token_ttl)
        return token

    def user_of(self, request: Request) -> str:
        """The user a request is made by; 401 with a clear message otherwise."""
        return self.principal_of(request).name

    def principal_of(self, request: Request) -> Principal:
        """Who a request is made by, with team and role; 401 with a clear message otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value.strip())
        if scheme.lower() == "bearer":
            return self.principal_of_token(value.strip())
        raise ApiError(
            401,
            "authentication required: use HTTP Basic (curl -u USER) or a bearer token "
            "from POST /api/v1/authenticate",
            _CHALLENGE,
        )

    def principal_of_token(self, token: str) -> Principal:
        """Who holds a bearer token: an API token (``rst_...``) or a session token."""
        if token.startswith(API_TOKEN_PREFIX):
            return self._api_token(token)
        return self._bearer(token)

    def _basic(self, value: str) -> Principal:
        try:
            username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "malformed Basic credentials", _CHALLENGE) from None
        key = _sha256(f"{username}\0{password}")
        with self._guard:
            hit = self._verified.get(key)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        with self.sessions() as session:
            user = users.get_user(session, username)
            ok = user is not None and password_matches(user.password_hash, password)
        if not ok or user is None:
            raise ApiError(401, "invalid username or password", _CHALLENGE)
        principal = _user_principal(user.username, user.role)
        with self._guard:
            self._verified[key] = (principal, time.monotonic() + BASIC_CACHE_SECONDS)
        return principal

    def _bearer(self, token: str) -> Principal:
        with self.sessions() as session:
            user = users.user_for_token(session, _sha256(token))
        if user is None:
            raise ApiError(401, "bearer token is invalid or expired: authenticate again")
        return _user_principal(user.username, user.role)

    def _api_token(self, token: str) -> Principal:
        with transaction(self.sessions) as session:
            row = api_tokens.by_hash(session, _sha256(token))
            if row is None:
                raise ApiError(401, "API token is not known: ask an admin for a new one")
            if row.revoked_at is not None:
                raise ApiError(401, f"API token {row.prefix}... was revoked: ask for a new one")
            api_tokens.note_use(session, row)
            return Principal(name=f"token:{row.name}", team=row.team, role=row.role)


def _user_principal(username: str, role: str) -> Principal:
    """Users log in with a password; admins act for the admin team, others for themselves."""
    role = role if role in ROLES else "viewer"
    return Principal(name=username, team=ADMIN_TEAM if role == "admin" else username, role=role)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
