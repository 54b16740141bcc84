"""The API against its own OpenAPI document, fuzzed by schemathesis: for every operation,
generated requests from an admin, an operator, a viewer and nobody get no server error,
and every answer is one the document describes (status, media type, shape).

It runs an API of its own (on its own database and Redis database, with no worker), so
that what the fuzzer changes (configuration, tokens, queued scans) touches no other test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from regscan.db import upgrade
from testbed.services import RedisServer
from testbed.stack import ADMIN, CALLBACK_SECRET, FAST_TIMINGS, WEBHOOK_SECRET, Stack
from tests.conftest import _postgres_database, _sqlite_url
from tests.test_enqueue import issue_token

pytestmark = pytest.mark.e2e
REDIS_DB = 13
EXAMPLES = 6  # per operation and caller: the whole run stays within a few minutes
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Fuzzed:
    base: str
    callers: dict[str, dict[str, str]]
    document: dict[str, Any]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fuzzed]:
    databases = (
        _sqlite_url(tmp_path_factory.mktemp("fuzz"))
        if request.param == "sqlite"
        else _postgres_database()
    )
    url = next(databases)
    upgrade(url)
    env = {
        **os.environ,
        **FAST_TIMINGS,
        "REGSCAN_DATABASE_URL": url,
        "REGSCAN_REDIS_URL": redis_server.url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        "REGSCAN_ADMIN_USER": ADMIN[0],
        "REGSCAN_ADMIN_PASSWORD": ADMIN[1],
        "REGSCAN_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REGSCAN_CALLBACK_SECRET": CALLBACK_SECRET,
    }
    stack = Stack(env, tmp_path_factory.mktemp("fuzz-logs"))
    try:
        stack.start_api()
        tokens = {role: issue_token(stack.api, role)["token"] for role in ("operator", "viewer")}
        admin = stack.api.http.auth
        assert isinstance(admin, tuple)
        import base64

        basic = base64.b64encode(f"{admin[0]}:{admin[1]}".encode()).decode()
        callers = {
            "admin": {"Authorization": f"Basic {basic}"},
            **{role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()},
            "anonymous": {},
        }
        yield Fuzzed(stack.api.base, callers, stack.api.get("/openapi.json").json())
    finally:
        stack.stop()
        for _ in databases:  # drops a PostgreSQL database
            pass


def test_every_caller_gets_answers_the_document_describes(fuzzed: Fuzzed):
    schema = schemathesis.openapi.from_dict(fuzzed.document)
    checked = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def holds(case: Any) -> None:
            for role, headers in fuzzed.callers.items():
                response = case.call(base_url=fuzzed.base, headers=headers, timeout=30)
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:
                    raise AssertionError(f"as {role}: {exc}") from exc

        holds()
        checked += 1
    assert checked == len([1 for item in fuzzed.document["paths"].values() for _ in item])
