"""What a worker process holds once: settings, database sessions, Redis, the publisher,
admission and recovery (from :func:`scheduler.wiring.wire`), and the registry
credentials in use (decrypted, briefly cached, never logged)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from core.logs import add_secret
from core.reference import parse_registry
from core.secrets import SecretKeyError, UndecryptableSecret, secret_box
from core.settings import Settings, get_settings
from core.tasks import Publisher
from models import credentials as credential_store
from scanner.errors import ScanError
from scanner.registry.auth import RegistryAuth
from scanner.registry.client import RegistryClient, SessionPool
from scheduler.admission import Admission
from scheduler.recovery import Recovery
from scheduler.wiring import Wiring, wire
from worker.telemetry import CountedRequests

CREDENTIAL_CACHE_SECONDS = 60.0


class CredentialUnavailable(ScanError):
    """A specification's credential cannot be used here: unknown, or not decryptable."""


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
        self._accounts: dict[str, tuple[float, tuple[str, str]]] = {}
        self._auths: dict[tuple[str, str], RegistryAuth] = {}

    def __repr__(self) -> str:
        return f"RegistryAuths({len(self._auths)} registries)"

    def for_registry(self, base_url: str, credential_id: str = "") -> RegistryAuth:
        """The auth for a registry, with the credential's account, or anonymous for ""."""
        username, password = self._account(credential_id) if credential_id else ("", "")
        key = (base_url, credential_id)
        with self._guard:
            auth = self._auths.get(key)
            if auth is None or not auth.uses(username, password):
                s = self.settings
                auth = RegistryAuth(
                    base_url,
                    username,
                    password,
                    timeout=(s.registry_connect_timeout, s.registry_read_timeout),
                )
                self._auths[key] = auth
        return auth

    def _account(self, credential_id: str) -> tuple[str, str]:
        now = time.monotonic()
        with self._guard:
            hit = self._accounts.get(credential_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        account = self._load(credential_id)
        with self._guard:
            self._accounts[credential_id] = (now + self.ttl, account)
        return account

    def _load(self, credential_id: str) -> tuple[str, str]:
        with self.sessions() as session:
            row = credential_store.get_credential(session, credential_id)
        if row is None:
            raise CredentialUnavailable(
                f"credential {credential_id!r} does not exist: create it with "
                "POST /api/v1/credentials or change the specification's credentialID"
            )
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
        return row.account_id, password


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

    def registry_client(self, base_url: str, credential_id: str = "") -> RegistryClient:
        """A client for one registry, authenticated with the credential if one is named.

        Raises ``CredentialUnavailable`` (a ``ScanError``) when the credential cannot be used.
        """
        s = self.settings
        return RegistryClient(
            base_url,
            connect_timeout=s.registry_connect_timeout,
            read_timeout=s.registry_read_timeout,
            retries=s.registry_retries,
            backoff=s.registry_backoff,
            backoff_max=s.registry_backoff_max,
            pool=self.registry_sessions,
            auth=CountedRequests(
                self.auths.for_registry(base_url, credential_id), parse_registry(base_url).host
            ),
        )


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    from worker.app import app

    return Runtime.wired(wire(get_settings(), sender=app))
