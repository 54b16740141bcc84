"""HTTP Basic and bearer-token authentication.

Passwords are stored as argon2 hashes. Verifying argon2 costs tens of
milliseconds by design, so a successful Basic check is remembered for a minute,
keyed by a SHA-256 of the credentials (never the password itself).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from models import accounts
from models.base import utcnow
from models.db import transaction

_hasher = PasswordHasher()
BASIC_CACHE_SECONDS = 60.0
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="regscan"'}


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
        user = accounts.get_user(session, username)
        if user is not None and (
            password is None or password_matches(user.password_hash, password)
        ):
            return
        if password is None:
            raise RuntimeError(
                f"no user {username!r} exists yet: set REGSCAN_ADMIN_PASSWORD to create it"
            )
        accounts.put_user(session, username, hash_password(password))


class Authenticator:
    def __init__(self, sessions: sessionmaker[Session], token_ttl_seconds: int) -> None:
        self.sessions = sessions
        self.token_ttl = timedelta(seconds=token_ttl_seconds)
        self._verified: dict[str, tuple[str, float]] = {}
        self._guard = threading.Lock()

    def issue_token(self, username: str, password: str) -> str:
        with transaction(self.sessions) as session:
            user = accounts.get_user(session, username)
            if user is None or not password_matches(user.password_hash, password):
                raise ApiError(401, "invalid username or password")
            token = secrets.token_urlsafe(32)
            accounts.add_token(session, user, _sha256(token), utcnow() + self.token_ttl)
        return token

    def user_of(self, request: Request) -> str:
        """The user a request is made by; 401 with a clear message otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value.strip())
        if scheme.lower() == "bearer":
            return self._bearer(value.strip())
        raise ApiError(
            401,
            "authentication required: use HTTP Basic (curl -u USER) or a bearer token "
            "from POST /api/v1/authenticate",
            _CHALLENGE,
        )

    def _basic(self, value: str) -> str:
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
            user = accounts.get_user(session, username)
            ok = user is not None and password_matches(user.password_hash, password)
        if not ok:
            raise ApiError(401, "invalid username or password", _CHALLENGE)
        with self._guard:
            self._verified[key] = (username, time.monotonic() + BASIC_CACHE_SECONDS)
        return username

    def _bearer(self, token: str) -> str:
        with self.sessions() as session:
            user = accounts.user_for_token(session, _sha256(token))
        if user is None:
            raise ApiError(401, "bearer token is invalid or expired: authenticate again")
        return user.username


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
