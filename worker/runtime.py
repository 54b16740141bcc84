"""What a worker process holds once: settings, database sessions, Redis, the scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, make_sessionmaker
from regscan.settings import Settings, get_settings
from scanner.registry import RegistryClient
from scheduler.service import Scheduler


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    scheduler: Scheduler

    def registry_client(self, base_url: str) -> RegistryClient:
        s = self.settings
        return RegistryClient(
            base_url,
            connect_timeout=s.registry_connect_timeout,
            read_timeout=s.registry_read_timeout,
            retries=s.registry_retries,
            backoff=s.registry_backoff,
            backoff_max=s.registry_backoff_max,
        )


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    from worker.app import app

    settings = get_settings()
    sessions = make_sessionmaker(
        make_engine(settings.database_url, idle_transaction_seconds=settings.lock_ttl_seconds)
    )
    redis = Redis.from_url(settings.redis_url)
    return Runtime(settings, sessions, redis, Scheduler(settings, sessions, redis, app))
