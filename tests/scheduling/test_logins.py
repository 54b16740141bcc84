"""Logins in process, over a real SQLite and Redis: a bearer token can be revoked, and a
new password logs out every token the old one opened (S7 of the security review)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from starlette.requests import Request

from api.auth import Authenticator, ensure_admin
from api.errors import ApiError
from core.settings import Settings
from models.db import make_engine, make_sessionmaker
from tests.scheduling.conftest import REDIS_DB


def _request(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "headers": headers, "client": ("192.0.2.7", 40000)})


@pytest.fixture
def auth(migrated_template: Path, tmp_path: Path, redis_server: Any) -> Authenticator:
    database = tmp_path / "regscan.db"
    shutil.copy(migrated_template, database)
    settings = Settings(database_url=f"sqlite:///{database}")
    redis = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}")
    redis.flushdb()
    sessions = make_sessionmaker(make_engine(settings.database_url))
    ensure_admin(sessions, "admin", "first password")
    return Authenticator(settings, sessions, redis)


def test_a_bearer_token_can_be_logged_out(auth: Authenticator):
    token = auth.issue_token("admin", "first password", "192.0.2.7")
    assert auth.principal_of(_request(token)).name == "admin"

    assert auth.revoke_token(_request(token))

    with pytest.raises(ApiError) as refused:
        auth.principal_of(_request(token))
    assert refused.value.status == 401


def test_a_new_password_logs_out_every_token_of_the_old_one(auth: Authenticator):
    tokens = [auth.issue_token("admin", "first password", "192.0.2.7") for _ in range(2)]

    ensure_admin(auth.sessions, "admin", "second password")

    for token in tokens:
        with pytest.raises(ApiError) as refused:
            auth.principal_of(_request(token))
        assert refused.value.status == 401
    assert auth.principal_of(_request(auth.issue_token("admin", "second password", "x")))
