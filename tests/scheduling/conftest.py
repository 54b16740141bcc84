"""In-process tests of admission and recovery: the real classes, over a real Redis and a
real SQLite file migrated by Alembic, with no API or worker process. Tasks are really
published (through Celery, to the same Redis), so a test reads what a worker would get
from the queues themselves."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from core import keys, tasks
from core.reference import ImageRef
from core.requester import Requester
from core.settings import Settings
from models import specs
from models.db import transaction
from regscan.db import upgrade
from scheduler.admission import Admission
from scheduler.recovery import Recovery
from scheduler.wiring import wire

REGISTRY = "http://127.0.0.1:5999"  # never contacted: nothing here scans
REDIS_DB = 15  # the process-stack tests use the low database numbers


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, copied for each test (migrating takes longer)."""
    path = tmp_path_factory.mktemp("template") / "regscan.db"
    upgrade(f"sqlite:///{path}")
    return path


@dataclass
class Scheduling:
    """Admission and recovery of one fresh database and Redis database."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: Redis
    admission: Admission
    recovery: Recovery

    def recovery_of_another_worker(self) -> Recovery:
        """The recovery passes of a second worker process on the same database and Redis."""
        w = wire(self.settings)
        return w.recovery

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The task messages waiting on a Celery queue, oldest first: ``(task, args)`` each,
        read as Celery's message protocol 2 writes them."""
        found = []
        for raw in reversed(self.redis.lrange(queue, 0, -1)):  # LPUSHed: newest first
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["task"], args))
        return found

    def waiting(self, team: str) -> list[int]:
        """The on-demand job ids in a team's list, in order."""
        return [int(i) for i in self.redis.lrange(keys.fair_team(team), 0, -1)]

    def forget_redis(self) -> None:
        """What a Redis restart without persistence does: every queue entry is gone."""
        self.redis.flushdb()


@pytest.fixture
def scheduling(migrated_template: Path, tmp_path: Path, redis_server: Any) -> Iterator[Scheduling]:
    database = tmp_path / "regscan.db"
    shutil.copy(migrated_template, database)
    settings = Settings(
        database_url=f"sqlite:///{database}",
        redis_url=redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        team_ondemand_limit=3,
        ondemand_requeue_seconds=0.5,
        lock_ttl_seconds=2,
        max_attempts=2,
    )
    w = wire(settings)
    w.redis.flushdb()
    with transaction(w.sessions) as session:
        specs.replace_specs(session, [spec_fields(REGISTRY, "app/*")])
    try:
        yield Scheduling(settings, w.sessions, w.redis, w.admission, w.recovery)
    finally:
        w.redis.flushdb()
        w.sessions.kw["bind"].dispose()


def spec_fields(registry: str, repository: str, **extra: Any) -> dict[str, Any]:
    from core.reference import parse_registry

    return {
        "version": "2",
        "address": registry,
        "registry_host": parse_registry(registry).host,
        "repository": repository,
        "tag": "",
        "excluded_repositories": [],
        "excluded_tags": [],
        "credential_id": "",
        "os": "linux",
        "cap": 5,
        "scanners": 2,
        **extra,
    }


def image(repo: str = "app/web", tag: str = "1.0") -> ImageRef:
    return ImageRef(registry=REGISTRY, repo=repo, tag=tag)


def caller(team: str = "team-a", name: str = "svc") -> Requester:
    return Requester(name, team)


QUEUE_REGULAR = tasks.QUEUE_REGULAR
QUEUE_ONDEMAND = tasks.QUEUE_ONDEMAND
