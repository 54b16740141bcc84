"""HTTP Basic and bearer-token authentication, and the role each caller holds.

Passwords are stored as argon2 hashes. Verifying argon2 costs tens of
milliseconds by design, so a successful Basic check is remembered for a minute,
keyed by a SHA-256 of the credentials (never the password itself), as long as the
user's password stays the same.

Bearer tokens are either session tokens from ``POST /authenticate`` or API tokens
(``rst_...``) that an admin issued to a team's service; both are stored as SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Request
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from api.guards import check_text
from core import keys
from core.settings import Settings
from models import api_tokens, users
from models.base import utcnow
from models.db import transaction
from models.users import User

log = logging.getLogger(__name__)
_hasher = PasswordHasher()
BASIC_CACHE_SECONDS = 60.0
# How long a login waits for its turn to have its password checked.
CHECK_WAIT_SECONDS = 10.0
# A user name may fail this many times the limit of a client address per window.
USER_FACTOR = 5
# Client addresses this process remembers as over their limit, at most.
MAX_BLOCKED = 100_000
# What an unknown user's password is checked against, so that it costs the same.
_UNKNOWN_USER_HASH = _hasher.hash(secrets.token_urlsafe(16))
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
        if user is not None:
            # A new password logs out every session the old one opened.
            users.delete_tokens_of(session, user.id)


class Authenticator:
    """Who a request is made by. Password checks are the costly part (argon2, 64 MiB
    each): failed logins are counted per client address and per user name in Redis and
    refused past ``login_failures`` per window, at most ``login_concurrency`` checks run
    at once in this process, and an unknown user costs as much as a known one, so that
    the time of an answer does not tell which names exist."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], redis: Redis) -> None:
        self.sessions = sessions
        self.redis = redis
        self.token_ttl = timedelta(seconds=settings.token_ttl_seconds)
        self.failures = settings.login_failures
        self.window = settings.login_window_seconds
        self._verified: dict[str, tuple[Principal, str, float]] = {}
        self._guard = threading.Lock()
        self._checking = threading.BoundedSemaphore(settings.login_concurrency)
        # Clients over their limit, and until when (time.monotonic()): refused here
        # without asking Redis, so that a flood costs as little as possible.
        self._blocked: dict[str, float] = {}

    def issue_token(self, username: str, password: str, client: str) -> str:
        user = self._login(username, password, client, challenge=False)
        token = secrets.token_urlsafe(32)
        with transaction(self.sessions) as session:
            users.add_token(session, user.id, _sha256(token), utcnow() + self.token_ttl)
        return token

    def revoke_token(self, request: Request) -> bool:
        """Log the bearer token of ``request`` out; False when it carries none of ours."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = value.strip()
        if scheme.lower() != "bearer" or not token or token.startswith(API_TOKEN_PREFIX):
            return False
        with transaction(self.sessions) as session:
            return users.delete_token(session, _sha256(token))

    def principal_of(self, request: Request) -> Principal:
        """Who a request is made by, with team and role; 401 with a clear message otherwise."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            return self._basic(value.strip(), client_of(request))
        if scheme.lower() == "bearer":
            return self.principal_of_token(value.strip())
        raise ApiError(
            401,
            "authentication required: use HTTP Basic (curl -u USER) or a bearer token "
            "from POST /api/v1/authenticate",
            _CHALLENGE,
        )

    def principal_of_token(self, token: str) -> Principal:
        """Who a token belongs to: a session token or an API token (the dashboard keeps
        one in its cookie); 401 otherwise."""
        if token.startswith(API_TOKEN_PREFIX):
            return self._api_token(token)
        return self._bearer(token)

    def end_session(self, token: str) -> None:
        """Forget a session token (logging out); API tokens are revoked by an admin."""
        if token.startswith(API_TOKEN_PREFIX):
            return
        with transaction(self.sessions) as session:
            users.delete_token(session, _sha256(token))

    def _basic(self, value: str, client: str) -> Principal:
        try:
            username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "malformed Basic credentials", _CHALLENGE) from None
        key = _sha256(f"{username}\0{password}")
        with self._guard:
            hit = self._verified.get(key)
        if hit is not None and hit[2] > time.monotonic() and self._unchanged(username, hit[1]):
            return hit[0]
        user = self._login(username, password, client, challenge=True)
        principal = _user_principal(user.username, user.role)
        with self._guard:
            expires = time.monotonic() + BASIC_CACHE_SECONDS
            self._verified[key] = (principal, user.password_hash, expires)
        return principal

    def _unchanged(self, username: str, password_hash: str) -> bool:
        """Whether a remembered Basic login still holds: its user's password is the same."""
        with self.sessions() as session:
            return users.password_hash_of(session, username) == password_hash

    def _login(self, username: str, password: str, client: str, *, challenge: bool) -> User:
        """The user these credentials are good for; 401 otherwise, 429 past the limit."""
        headers = _CHALLENGE if challenge else None
        if check_text(username) is not None or check_text(password) is not None:
            raise ApiError(401, "invalid username or password", headers)
        self._refuse_if_blocked(client)
        counters = self._counters(username, client)
        # Counted before the check, so that a burst cannot slip past the limit while
        # its first attempts are being checked; a success gives its count back.
        self._count_attempt(counters, client)
        with self.sessions() as session:
            user = users.get_user(session, username)
        if not self._password_ok(user, password) or user is None:
            raise ApiError(401, "invalid username or password", headers)
        self._forget_attempt(counters)
        return user

    def _password_ok(self, user: User | None, password: str) -> bool:
        # An unknown user is checked against a hash of nothing in particular: the answer
        # takes as long as for a known one.
        stored = user.password_hash if user is not None else _UNKNOWN_USER_HASH
        if not self._checking.acquire(timeout=CHECK_WAIT_SECONDS):
            raise ApiError(
                503, "too many logins are being checked; try again", {"Retry-After": "1"}
            )
        try:
            return password_matches(stored, password) and user is not None
        finally:
            self._checking.release()

    def _counters(self, username: str, client: str) -> list[tuple[str, int]]:
        """The failure counters a login is held to, each with its limit. A user name gets
        more than a client address: a guesser spread over many addresses is slowed down,
        but failing on purpose from one address cannot lock a user out."""
        return [
            (keys.login_failures_of_client(client), self.failures),
            (keys.login_failures_of_user(_sha256(username)), self.failures * USER_FACTOR),
        ]

    def _refuse_if_blocked(self, client: str) -> None:
        until = self._blocked.get(client)
        if until is None:
            return
        wait = until - time.monotonic()
        if wait <= 0:
            self._blocked.pop(client, None)
            return
        raise ApiError(
            429,
            f"too many failed logins; try again in {int(wait) + 1} s",
            {"Retry-After": str(int(wait) + 1)},
        )

    def _count_attempt(self, counters: list[tuple[str, int]], client: str) -> None:
        """Count a login attempt; 429 when it is one too many for its window."""
        try:
            with self.redis.pipeline() as pipe:
                for key, _limit in counters:
                    pipe.incr(key)
                    pipe.expire(key, self.window, nx=True)
                results = pipe.execute()
            over = [
                key for (key, limit), n in zip(counters, results[::2], strict=True) if n > limit
            ]
            wait = max((int(self.redis.ttl(key)) for key in over), default=0)
        except RedisError:
            log.warning("login attempts cannot be counted: Redis is not answering")
            return
        if over:
            if counters[0][0] in over:
                if len(self._blocked) > MAX_BLOCKED:
                    self._blocked.clear()  # a flood from very many addresses: start over
                self._blocked[client] = time.monotonic() + max(wait, 1)
            raise ApiError(
                429,
                f"too many failed logins; try again in {max(wait, 1)} s",
                {"Retry-After": str(max(wait, 1))},
            )

    def _forget_attempt(self, counters: list[tuple[str, int]]) -> None:
        """A login that succeeded is not a failure."""
        try:
            with self.redis.pipeline() as pipe:
                for key, _limit in counters:
                    pipe.decr(key)
                pipe.execute()
        except RedisError:
            log.warning("a login attempt could not be given back: Redis is not answering")

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


def client_of(request: Request) -> str:
    """What failed logins are counted against: the client's IPv4 address, or the /64 of
    its IPv6 one (one host is routinely given a whole /64 to pick addresses from). Behind
    a proxy that is not among REGSCAN_TRUSTED_PROXIES, the proxy is the one client."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _user_principal(username: str, role: str) -> Principal:
    """Users log in with a password; admins act for the admin team, others for themselves."""
    role = role if role in ROLES else "viewer"
    return Principal(name=username, team=ADMIN_TEAM if role == "admin" else username, role=role)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
