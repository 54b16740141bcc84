"""The regular-scan lease in process: its fencing tokens never repeat, even after Redis
was restarted empty."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.settings import Settings
from models import JobKind
from models.db import transaction
from models.fencing import claim_regular
from models.jobs import create_job
from scheduler.wiring import wire
from testbed.services import RedisServer, free_port
from tests.scheduling.conftest import caller
from worker.lease import Lease
from worker.runtime import Runtime


def test_fencing_tokens_keep_growing_across_a_redis_restarted_empty(
    migrated_template: Path, tmp_path: Path
):
    # Given a sweep claimed under the first lease's token
    database = tmp_path / "regscan.db"
    shutil.copy(migrated_template, database)
    port = free_port()
    redis = RedisServer(port=port).start()
    settings = Settings(database_url=f"sqlite:///{database}", redis_url=redis.url)
    rt = Runtime.wired(wire(settings))
    with transaction(rt.sessions) as session:
        first_job = create_job(session, JobKind.REGULAR_ALL, caller()).id
        second_job = create_job(session, JobKind.REGULAR_ALL, caller()).id
    first = Lease(rt, first_job)
    first_token = first.acquire()
    assert first_token is not None
    with transaction(rt.sessions) as session:
        assert claim_regular(session, first_job, first_token) is not None
    first.release()

    # When Redis restarts with nothing kept, at the same address
    redis.stop()
    redis = RedisServer(port=port).start()
    try:
        # Then the next lease's token is still greater than any handed out before
        second = Lease(rt, second_job)
        second_token = second.acquire()
        assert second_token is not None and second_token > first_token
        second.release()
    finally:
        redis.stop()
