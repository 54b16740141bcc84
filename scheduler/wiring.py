"""The one place that builds what a process runs on: database sessions, the Redis client,
the publisher, admission and recovery. The API, the workers and the schedule clock all start
here, so they talk to the same things in the same way."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from core.tasks import Publisher, Sender, make_celery
from models.db import make_engine, make_sessionmaker
from scheduler.admission import Admission
from scheduler.recovery import Recovery

REDIS_TIMEOUT_SECONDS = 5.0


@dataclass
class Wiring:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    publisher: Publisher
    admission: Admission
    recovery: Recovery


def wire(settings: Settings, sender: Sender | None = None) -> Wiring:
    """Everything a process needs, from ``settings``. ``sender`` is the Celery app tasks
    are sent through; a worker passes its own, others get one that only sends."""
    # A worker frozen mid-transaction must not hold row locks past its lease (PostgreSQL).
    engine = make_engine(settings.database_url, idle_transaction_seconds=settings.lock_ttl_seconds)
    sessions = make_sessionmaker(engine)
    # A Redis that hangs (paused, blackholed) must fail a request in seconds, not hold
    # its thread for ever.
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
    publisher = Publisher(sender if sender is not None else make_celery(settings))
    admission = Admission(settings, sessions, redis, publisher)
    return Wiring(
        settings=settings,
        sessions=sessions,
        redis=redis,
        publisher=publisher,
        admission=admission,
        recovery=Recovery(settings, sessions, redis, publisher, admission),
    )
