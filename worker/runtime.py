"""What a worker process holds once: settings, database sessions, Redis, the publisher,
admission and recovery (from :func:`scheduler.wiring.wire`), and the registry
credentials in use (decrypted, briefly cached, never logged) with the TLS options
their credential carries (``caCert``, ``skipVerify``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from requests.auth import AuthBase
from sqlalchemy.orm import Session, sessionmaker

from core import keys
from core.logs import add_secret
from core.reference import parse_registry
from core.secrets import SecretKeyError, UndecryptableSecret, secret_box
from core.settings import Settings, get_settings
from core.tasks import Publisher
from models import credentials as credential_store
from scanner.errors import ScanError
from scanner.registry.auth import FixedAuthorization, RegistryAuth
from scanner.registry.client import RegistryClient
from scanner.registry.transport import SessionPool
from scheduler.admission import Admission
from scheduler.recovery import Recovery
from scheduler.wiring import Wiring, wire
from worker.telemetry import CountedRequests

log = logging.getLogger(__name__)

CREDENTIAL_CACHE_SECONDS = 60.0


class CredentialUnavailable(ScanError):
    """A specification's credential cannot be used here: unknown, or not decryptable."""


@dataclass(frozen=True)
class Account:
    """What a credential gives a registry client: the account, and how to check TLS."""

    username: str = ""
    password: str = field(default="", repr=False)
    verify: bool | str = True


ANONYMOUS = Account()


def ca_bundle(pem: str) -> str:
    """The path of a file holding these CA certificates, for requests' ``verify``.

    requests reads CA certificates from a file, so each distinct bundle is written once,
    named by its SHA-256, into a folder of this user's; certificates are public."""
    folder = Path(tempfile.gettempdir()) / f"regscan-ca-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{hashlib.sha256(pem.encode()).hexdigest()}.pem"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text(pem)
        partial.replace(path)
    return str(path)


class RegistryAuths:
    """One ``RegistryAuth`` per (registry, credential) for the whole process, so that
    registry tokens are reused across images; credentials are read again from the
    database at most every ``ttl`` seconds, so changes reach running workers."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        ttl: float = CREDENTIAL_CACHE_SECONDS,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.ttl = ttl
        self._guard = threading.Lock()
        self._accounts: dict[str, tuple[float, Account]] = {}
        self._auths: dict[tuple[str, str], RegistryAuth] = {}

    def __repr__(self) -> str:
        return f"RegistryAuths({len(self._auths)} registries)"

    def for_registry(self, base_url: str, credential_id: str = "") -> RegistryAuth:
        """The auth for a registry, with the credential's account, or anonymous for ""."""
        account = self.account(credential_id)
        key = (base_url, credential_id)
        with self._guard:
            auth = self._auths.get(key)
            if auth is None or not auth.uses(account.username, account.password, account.verify):
                s = self.settings
                auth = RegistryAuth(
                    base_url,
                    account.username,
                    account.password,
                    timeout=(s.registry_connect_timeout, s.registry_read_timeout),
                    verify=account.verify,
                )
                self._auths[key] = auth
        return auth

    def account(self, credential_id: str) -> Account:
        """The credential's account and TLS options; anonymous with full checks for ""."""
        if not credential_id:
            return ANONYMOUS
        now = time.monotonic()
        with self._guard:
            hit = self._accounts.get(credential_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        account = self._load(credential_id)
        with self._guard:
            self._accounts[credential_id] = (now + self.ttl, account)
        return account

    def _load(self, credential_id: str) -> Account:
        with self.sessions() as session:
            row = credential_store.get_credential(session, credential_id)
        if row is None:
            raise CredentialUnavailable(
                f"credential {credential_id!r} does not exist: create it with "
                "POST /api/v1/credentials or change the specification's credentialID"
            )
        verify: bool | str = ca_bundle(row.ca_cert) if row.ca_cert else True
        if row.skip_verify:
            verify = False
        try:
            password = secret_box(self.settings).decrypt(row.secret_token)
        except SecretKeyError as exc:
            raise CredentialUnavailable(
                f"credential {credential_id!r} cannot be used by this worker: {exc}"
            ) from None
        except UndecryptableSecret as exc:
            raise CredentialUnavailable(
                f"credential {credential_id!r} cannot be decrypted: {exc}; give the API and "
                "every worker the same REGSCAN_SECRET_KEY, or save the credential again"
            ) from None
        add_secret(password)  # whatever logs an error of this registry, not its password
        return Account(row.account_id, password, verify)


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    publisher: Publisher
    admission: Admission
    recovery: Recovery
    auths: RegistryAuths = field(init=False, repr=False)
    # Kept for the process: each scan reuses the connections the last one left open.
    registry_sessions: SessionPool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.auths = RegistryAuths(self.settings, self.sessions)
        self.registry_sessions = SessionPool()

    @classmethod
    def wired(cls, wiring: Wiring) -> Runtime:
        w = wiring
        return cls(w.settings, w.sessions, w.redis, w.publisher, w.admission, w.recovery)

    def registry_client(
        self, base_url: str, credential_id: str = "", *, pull_authorization: str = ""
    ) -> RegistryClient:
        """A client for one registry, authenticated with the credential if one is named,
        or with ``pull_authorization`` (an HTTP Authorization value) when given; the
        credential's TLS options apply either way.

        Raises ``CredentialUnavailable`` (a ``ScanError``) when the credential cannot be used.
        """
        s = self.settings
        auth: AuthBase
        if pull_authorization:
            verify = self.auths.account(credential_id).verify
            auth = pull_auth(s, base_url, pull_authorization, verify)
        else:
            auth = self.auths.for_registry(base_url, credential_id)
            verify = auth.verify
        return RegistryClient(
            base_url,
            connect_timeout=s.registry_connect_timeout,
            read_timeout=s.registry_read_timeout,
            retries=s.registry_retries,
            backoff=s.registry_backoff,
            backoff_max=s.registry_backoff_max,
            pool=self.registry_sessions,
            auth=CountedRequests(auth, parse_registry(base_url).host),
            verify=verify,
        )

    def pull_authorization(self, job_id: int) -> str:
        """What Harbor gave for pulling the image of this job, or "" (core/keys.py).

        Redis being away is no reason to leave the job hanging: the scan goes on without
        them, and the registry's refusal says what went wrong."""
        try:
            value = self.redis.get(keys.pull_authorization(job_id))
        except RedisError as exc:
            log.warning("job=%s pull credentials unreadable: %s", job_id, type(exc).__name__)
            return ""
        return value.decode() if isinstance(value, bytes) else (value or "")

    def forget_pull_authorization(self, job_id: int) -> None:
        """Delete them now; should Redis be away, their TTL ends them."""
        try:
            self.redis.delete(keys.pull_authorization(job_id))
        except RedisError as exc:
            log.warning("job=%s pull credentials left to expire: %s", job_id, type(exc).__name__)


def pull_auth(
    settings: Settings, base_url: str, authorization: str, verify: bool | str
) -> AuthBase:
    """Auth for one scan from an HTTP Authorization value: Basic credentials go through
    the registry's own challenge (its token flow, as Harbor's robot accounts do); any
    other value is sent as it is."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ScanError(
                "the pull credentials given for this scan are not valid Basic"
            ) from None
        timeout = (settings.registry_connect_timeout, settings.registry_read_timeout)
        return RegistryAuth(base_url, user, password, timeout=timeout, verify=verify)
    return FixedAuthorization(base_url, authorization)


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    from worker.app import app

    return Runtime.wired(wire(get_settings(), sender=app))
