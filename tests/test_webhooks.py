"""Scan on push: a registry's notifications start on-demand scans of what was pushed."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from sqlalchemy import select

from models import WebhookEvent
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import WEBHOOK_SECRET, Api, Stack, wait_for

HOOK = "/api/v1/registry/webhook/webhook"
FILES = {"etc/os-release": b"ID=alpine\nVERSION_ID=3.19.1\n", "app/hello": b"hello\n"}


def spec(registry: str, repository: str) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository}


class Capture:
    """A loopback listener that keeps every notification body a registry sends it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def envelope_of(self, repo: str, tag: str) -> dict[str, Any] | None:
        """A received body holding the push event of ``repo:tag``, cut down to that event."""
        for body in list(self.bodies):
            for event in body.get("events", []):
                target = event.get("target", {})
                pushed = event.get("action") == "push" and target.get("tag") == tag
                if pushed and target.get("repository") == repo:
                    return {"events": [event]}
        return None


@dataclass
class Notifying:
    registry: RegistryServer
    pusher: Pusher
    capture: Capture


@pytest.fixture(scope="module")
def notifying(stack: Stack) -> Iterator[Notifying]:
    """A registry notifying the running API (with the secret) and a capturing listener."""
    suffix = stack.api.get("/api/v1/settings/registry").json()["webhookUrlSuffix"]
    capture = Capture()
    endpoint = {"timeout": "3s", "threshold": 3, "backoff": "1s"}
    notifications = [
        {"name": "regscan", "url": stack.api.base + HOOK + suffix, **endpoint},
        {"name": "capture", "url": capture.url, **endpoint},
    ]
    try:
        with RegistryServer(notifications=notifications) as registry:
            yield Notifying(registry, Pusher(registry.url), capture)
    finally:
        capture.server.shutdown()


def webhook_jobs(api: Api, repo: str) -> list[dict[str, Any]]:
    scans = api.get("/api/v1/registry/scans", params={"limit": 250}).json()
    return [s for s in scans if s["source"] == "webhook" and (s["target"] or {})["repo"] == repo]


def wait_results(api: Api, name: str, count: int = 1) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (r := api.results(name=name)) and len(r) >= count and r,
        60,
        f"results of {name}",
    )


def post_hook(api: Api, body: Any, secret: str | None = WEBHOOK_SECRET) -> requests.Response:
    params = {"secret": secret} if secret is not None else {}
    return requests.post(api.base + HOOK, json=body, params=params, timeout=30)


def event_outcome(db, event_id: str) -> WebhookEvent | None:
    """The record of a handled event (None while unknown or still being handled)."""
    with db() as session:
        query = select(WebhookEvent).where(WebhookEvent.event_id == event_id)
        row = session.scalars(query).first()
    return row if row is not None and row.outcome != "pending" else None


def test_settings_show_the_webhook_suffix(api: Api):
    r = api.get("/api/v1/settings/registry")
    assert r.json()["webhookUrlSuffix"] == f"?secret={WEBHOOK_SECRET}"


def test_a_pushed_tag_is_scanned(api: Api, notifying: Notifying, name: str):
    # Given a specification covering the notifying registry
    api.set_specs(spec(notifying.registry.url, f"{name}/*"))
    # When a new tag is pushed
    image = notifying.pusher.push_image(f"{name}/app", "1.0", FILES)
    # Then its on-demand result appears, asked for by the webhook
    results = wait_results(api, f"{notifying.registry.host}/{name}/app:1.0")
    assert results[0]["id"] == image.config_digest and results[0]["err"] == ""
    (job,) = webhook_jobs(api, f"{name}/app")
    assert results[0]["scanID"] == job["id"]
    assert job["kind"] == "on-demand" and job["requestedBy"] == "webhook"
    assert job["target"]["tag"] == "1.0" and job["target"]["digest"] == image.digest


def test_a_multi_arch_push_is_one_scan_of_the_index(api: Api, notifying: Notifying, name: str, db):
    # Given a specification covering the notifying registry
    api.set_specs(spec(notifying.registry.url, f"{name}/*"))
    # When a two-platform index is pushed (children by digest, then the tagged index)
    index = notifying.pusher.push_multiplatform(f"{name}/multi", "2.0", FILES)
    # Then one scan, of the index, gives a result per platform
    results = wait_results(api, f"{notifying.registry.host}/{name}/multi:2.0", 2)
    assert {r["platform"] for r in results} >= {"linux/amd64", "linux/arm64/v8"}
    event = wait_for(lambda: notifying.capture.envelope_of(f"{name}/multi", "2.0"), 30, "event")
    assert event_outcome(db, event["events"][0]["id"]).outcome == "scanned"
    (job,) = webhook_jobs(api, f"{name}/multi")
    assert job["target"]["digest"] == index.digest


def test_a_replayed_event_starts_nothing(api: Api, notifying: Notifying, name: str):
    # Given a push that was scanned, and the notification the registry sent for it
    api.set_specs(spec(notifying.registry.url, f"{name}/*"))
    notifying.pusher.push_image(f"{name}/app", "3.0", FILES)
    envelope = wait_for(
        lambda: notifying.capture.envelope_of(f"{name}/app", "3.0"), 30, "the push event"
    )
    wait_for(lambda: webhook_jobs(api, f"{name}/app"), 30, "the scan of the push")
    # When the same notification is posted again
    r = post_hook(api, envelope)
    # Then it is counted as a duplicate and no second scan starts
    assert r.status_code == 200, r.text
    assert r.json() == {"scanned": 0, "ignored": 0, "outOfScope": 0, "duplicate": 1, "jobs": []}
    assert len(webhook_jobs(api, f"{name}/app")) == 1


def test_a_wrong_or_missing_secret_is_refused(api: Api):
    body = {"events": []}
    for secret in ("not-the-secret", None):
        r = post_hook(api, body, secret)
        assert r.status_code == 401 and "webhook secret" in r.json()["err"]
    headers = {"X-Regscan-Webhook-Secret": WEBHOOK_SECRET}
    assert requests.post(api.base + HOOK, json=body, headers=headers).status_code == 200
    bearer = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    assert (
        requests.post(
            api.base + "/api/v34.04/registry/webhook/webhook", json=body, headers=bearer
        ).status_code
        == 200
    )


def test_a_push_outside_every_specification_is_counted_not_scanned(
    api: Api, notifying: Notifying, name: str, db
):
    # Given a specification that covers only some repositories of the registry
    api.set_specs(spec(notifying.registry.url, f"{name}/in*"))
    # When an image outside it is pushed
    notifying.pusher.push_image(f"{name}/out", "1.0", FILES)
    envelope = wait_for(
        lambda: notifying.capture.envelope_of(f"{name}/out", "1.0"), 30, "the push event"
    )
    event_id = envelope["events"][0]["id"]
    # Then its event is recorded as out of scope, and no scan is made
    row = wait_for(lambda: event_outcome(db, event_id), 30, "the event to be handled")
    assert row.outcome == "out-of-scope" and row.job_id is None
    # And a fresh event for it, posted directly, is counted as out of scope
    fresh = copy.deepcopy(envelope)
    fresh["events"][0]["id"] = str(uuid.uuid4())
    r = post_hook(api, fresh)
    assert r.status_code == 200 and r.json()["outOfScope"] == 1 and r.json()["scanned"] == 0
    assert webhook_jobs(api, f"{name}/out") == []


def test_a_harbor_push_artifact_is_scanned(
    api: Api, registry: RegistryServer, pusher: Pusher, name: str
):
    # Given an image in a registry regscan covers
    api.set_specs(spec(registry.url, f"{name}/*"))
    image = pusher.push_image(f"{name}/app", "4.0", FILES)
    # When Harbor's PUSH_ARTIFACT webhook for it arrives
    payload = {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1700000000,
        "operator": "ci",
        "event_data": {
            "resources": [
                {
                    "digest": image.digest,
                    "tag": "4.0",
                    "resource_url": f"{registry.host}/{name}/app:4.0",
                }
            ],
            "repository": {"name": "app", "namespace": name, "repo_full_name": f"{name}/app"},
        },
    }
    r = post_hook(api, payload)
    # Then it is scanned once, and the same webhook again is a duplicate
    assert r.status_code == 200 and r.json()["scanned"] == 1, r.text
    wait_results(api, f"{registry.host}/{name}/app:4.0")
    assert post_hook(api, payload).json()["duplicate"] == 1
    assert len(webhook_jobs(api, f"{name}/app")) == 1


def test_events_not_worth_scanning_are_ignored(api: Api, registry: RegistryServer, name: str):
    # Given a specification covering the registry
    api.set_specs(spec(registry.url, f"{name}/*"))
    target = {
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "digest": "sha256:" + "a" * 64,
        "repository": f"{name}/app",
        "url": f"{registry.url}/v2/{name}/app/manifests/sha256:{'a' * 64}",
    }
    blob = {**target, "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}
    events = [
        {"id": "e1", "action": "pull", "target": {**target, "tag": "1"}},
        {"id": "e2", "action": "push", "target": target},  # by digest: a child of an index
        {"id": "e3", "action": "push", "target": blob},
        {"id": "e4", "action": "push", "target": {**target, "tag": "bad tag"}},
        "not an event",
    ]
    # When they are posted, Then none is scanned
    r = post_hook(api, {"events": events})
    assert r.status_code == 200
    assert r.json() == {"scanned": 0, "ignored": 5, "outOfScope": 0, "duplicate": 0, "jobs": []}


@pytest.mark.parametrize(
    ("body", "message"),
    [("{not json", "not JSON"), ('{"hello": 1}', "expected a registry notification")],
)
def test_a_malformed_notification_is_a_clear_400(api: Api, body: str, message: str):
    r = requests.post(api.base + HOOK, data=body, params={"secret": WEBHOOK_SECRET}, timeout=30)
    assert r.status_code == 400 and message in r.json()["err"]
