"""JSON logs: with ``REGSCAN_LOG_FORMAT=json`` every line every process writes is one
JSON object, naming the job, image, team and task it is about; and no secret appears
in any of them, whatever the processes went through (a private registry, a wrong
registry password, failing scans and callbacks, bad webhook and login attempts).

The formatter's own behaviour (context, masking) is checked in process first.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from core import logs
from core.secrets import generate_key
from core.settings import Settings
from testbed.images import Pusher
from testbed.services import RedisServer, RegistryServer, free_port
from testbed.stack import ADMIN, Api, Stack, wait_for
from tests.conftest import stack_env
from tests.test_credentials import write_htpasswd

# The shape of a log line does not depend on the database.
pytestmark = pytest.mark.sqlite_only

# Unique per run: finding one anywhere means it leaked.
REGISTRY_PASSWORD = f"reg-pw-{uuid.uuid4().hex}"
WRONG_REGISTRY_PASSWORD = f"reg-wrong-{uuid.uuid4().hex}"
SECRETS = {
    "REGSCAN_SECRET_KEY": generate_key(),
    "REGSCAN_CALLBACK_SECRET": f"cb-{uuid.uuid4().hex}",
    "REGSCAN_WEBHOOK_SECRET": f"wh-{uuid.uuid4().hex}",
    "REGSCAN_METRICS_TOKEN": f"mt-{uuid.uuid4().hex}",
}
FIELDS = {"time", "level", "logger", "message", "process"}


# -- the formatter, in process ---------------------------------------------------------------


def _line(settings: Settings, message: str, *args: Any, **context: Any) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.add_configured_secrets(settings)
    handler.setFormatter(logs.formatter(settings))
    logger = logging.getLogger(f"test.logs.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    with logs.log_context(**context):
        logger.warning(message, *args)
    return stream.getvalue()


def test_a_json_line_carries_the_context_and_masks_secrets():
    password = f"admin-{uuid.uuid4().hex}"
    settings = Settings(log_format="json", admin_password=password)
    line = _line(
        settings,
        "login for %s failed, url %s\nsecond line",
        password,
        "redis://user:hunter2hunter2@redis:6379/0",
        job=12,
        image="r:5000/app:1",
        team="blue",
        task="regscan.scan_image",
    )
    assert line.count("\n") == 1  # one object per line, whatever the message held
    entry = json.loads(line)
    assert set(entry) >= FIELDS
    assert (entry["job"], entry["image"], entry["team"], entry["task"]) == (
        12,
        "r:5000/app:1",
        "blue",
        "regscan.scan_image",
    )
    assert entry["level"] == "WARNING"
    assert password not in line and "hunter2hunter2" not in line
    assert "[redacted]" in entry["message"]


def test_a_registry_password_added_later_is_masked_in_text_lines_too():
    secret = f"registry-{uuid.uuid4().hex}"
    logs.add_secret(secret)
    line = _line(Settings(log_format="text"), "auth with %s refused", secret, job=3)
    assert secret not in line
    assert line.rstrip().endswith("job=3")


def test_empty_context_values_are_left_out():
    entry = json.loads(_line(Settings(log_format="json"), "hello", job=None, team=""))
    assert "job" not in entry and "team" not in entry


# -- every process of a running stack --------------------------------------------------------


@dataclass
class Logged:
    stack: Stack
    logs: Path
    open_registry: RegistryServer
    private_registry: RegistryServer


@pytest.fixture(scope="module")
def logged(own_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    workdir = tmp_path_factory.mktemp("private")
    storage = workdir / "storage"
    htpasswd = write_htpasswd(workdir / "htpasswd", {"scanner": REGISTRY_PASSWORD})
    open_registry = RegistryServer(storage_dir=storage).start()
    private = RegistryServer(storage_dir=storage, htpasswd=htpasswd).start()
    redis = RedisServer(port=free_port()).start()
    log_dir = tmp_path_factory.mktemp("json-logs")
    env = stack_env(own_database, redis.url, REGSCAN_LOG_FORMAT="json", **SECRETS)
    stack = Stack(env, log_dir)
    try:
        stack.start_api()
        stack.start_worker("regular", "regular,images")
        stack.start_worker("ondemand", "ondemand,callbacks")
        yield Logged(stack, log_dir, open_registry, private)
    finally:
        stack.stop()
        redis.stop()
        private.stop()
        open_registry.stop()


@pytest.mark.e2e
def test_every_line_is_json_with_context_and_no_secret_anywhere(logged: Logged, name: str):
    api, stack = logged.stack.api, logged.stack
    repo = f"{name}/app"
    Pusher(logged.open_registry.url).push_image(repo, "1", {"a": name.encode()})
    host = logged.private_registry.host

    # Given a private registry reached with a stored credential, and one with a wrong one
    for cred, secret in (("good", REGISTRY_PASSWORD), ("bad", WRONG_REGISTRY_PASSWORD)):
        body = {"_id": cred, "type": "basic", "accountID": "scanner", "secret": {"plain": secret}}
        assert api.post("/api/v1/credentials", json=body).status_code == 200
    api.set_specs(
        {"version": "2", "registry": f"http://{host}", "repository": repo, "credentialID": "good"}
    )

    # When a sweep, failing on-demand scans and a failing callback run
    assert api.wait_job(api.started())["status"] == "completed"
    missing = {"registry": host, "repo": repo, "tag": "missing"}
    failed = api.started(
        {"onDemandScan": True, "tag": missing, "callbackUrl": f"http://localhost:{free_port()}/"}
    )
    assert api.wait_job(failed)["status"] == "failed"
    api.set_specs(
        {"version": "2", "registry": f"http://{host}", "repository": repo, "credentialID": "bad"}
    )
    denied = api.started({"onDemandScan": True, "tag": {"registry": host, "repo": repo}})
    assert api.wait_job(denied)["status"] == "failed"
    wait_for(lambda: api.job(failed)["callbacks"], 30, "a callback attempt")
    # and callers get things wrong
    webhook = f"{api.base}/api/v1/registry/webhook/webhook?secret=wrong"
    assert requests.post(webhook, json={"events": []}, timeout=10).status_code == 401
    assert Api(api.base, auth=(ADMIN[0], "not-it")).get("/api/v1/registry").status_code == 401
    metrics = {"Authorization": f"Bearer {SECRETS['REGSCAN_METRICS_TOKEN']}"}
    assert requests.get(f"{api.base}/metrics", headers=metrics, timeout=10).status_code == 200
    stack.stop()  # every process writes its last lines

    # Then every line of every process is one JSON object with the common fields
    entries = []
    for path in sorted(logged.logs.glob("*.log")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)  # fails on any line that is not JSON
            assert isinstance(entry, dict) and set(entry) >= FIELDS, (path.name, line)
            entries.append((path.stem, entry))
    assert {process for process, _ in entries} == {"api", "regular", "ondemand"}
    assert any(e["logger"].startswith("uvicorn") for p, e in entries if p == "api")
    assert any("ready." in e["message"] for p, e in entries if p == "regular")

    # And lines about a scan name its job, image, team and task
    scans = [e for _p, e in entries if e.get("job") == denied and "image" in e]
    assert scans, "no line names the denied scan's job and image"
    assert all(e["image"] == f"{host}/{repo}:latest" and e["team"] == "admin" for e in scans)
    assert any(e.get("task") == "regscan.scan_on_demand_next" for e in scans)
    failure = [e for e in scans if "access denied" in e["message"]]
    assert failure and failure[0]["level"] == "WARNING"
    sweep = [e for _p, e in entries if e.get("task") == "regscan.scan_image" and "job" in e]
    assert sweep and all("image" in e for e in sweep)

    # And no secret appears anywhere, in any form
    text = "\n".join(path.read_text() for path in logged.logs.glob("*.log"))
    secrets = [*SECRETS.values(), ADMIN[1], REGISTRY_PASSWORD, WRONG_REGISTRY_PASSWORD]
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"secrets in the logs: {leaked}"
