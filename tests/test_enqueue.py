"""The enqueue API other teams lean on: API tokens and roles, idempotency keys, bulk
on-demand scans and signed completion callbacks, against the real running service."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from redis import Redis
from sqlalchemy import func, select

from core import tasks
from core.callbacks import team_key
from models import ApiToken, ScanJob
from models.base import utcnow
from models.db import transaction
from models.idempotency import WINDOW, IdempotencyKey
from models.webhooks import WebhookEvent
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import CALLBACK_SECRET, Api, Stack, wait_for
from worker.housekeeping import prune

V1 = "/api/v1"
CALLERS = ("admin", "operator", "viewer", "anonymous")
# Routes that answer without a user on purpose: liveness, logging in, and registry
# push notifications (those carry the webhook secret instead).
PUBLIC = {"/api/v{version}/_ping", "/api/v{version}/authenticate"}
# Reads that hold secrets or their metadata: above viewers only.
ADMIN_READS = {
    "/api/v{version}/tokens",
    "/api/v{version}/credentials",
    "/api/v{version}/credentials/{credential_id}/usages",
    "/api/v{version}/callbacks/key",
}
# What any logged-in caller may do to itself, whatever its role.
SELF = {"/api/v{version}/logout"}


def spec(registry: str, repository: str = "", **extra: Any) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def issue_token(api: Api, role: str, team: str = "team-a") -> dict[str, Any]:
    r = api.post(
        f"{V1}/tokens", json={"name": f"{role}-{uuid.uuid4().hex[:6]}", "team": team, "role": role}
    )
    assert r.status_code == 200, r.text
    return r.json()


def client(stack: Stack, token: str | None) -> Api:
    """A client that authenticates with an API token, or not at all."""
    c = Api(stack.api.base, auth=None)
    if token:
        c.http.headers["Authorization"] = f"Bearer {token}"
    return c


@pytest.fixture
def callers(stack: Stack, api: Api) -> dict[str, Api]:
    """One client per role, plus one without credentials."""
    made = {role: client(stack, issue_token(api, role)["token"]) for role in CALLERS[1:3]}
    return {"admin": api, **made, "anonymous": client(stack, None)}


@pytest.fixture
def image(api: Api, pusher: Pusher, registry: RegistryServer, name: str) -> dict[str, str]:
    """An image inside the scanning configuration, as a scan request names it."""
    pusher.push_image(f"{name}/app", "1.0", {"app": name.encode()})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    return {"registry": registry.host, "repo": f"{name}/app", "tag": "1.0"}


# -- roles on every endpoint -------------------------------------------------------------


@dataclass
class Case:
    """One endpoint: how to call it, the least role allowed, and its answer when allowed."""

    method: str
    path: str
    least: str
    ok: int = 200
    body: Callable[[dict[str, Any]], Any] | None = None
    prepare: Callable[[Api], str] | None = field(default=None, repr=False)


def _on_demand(image: dict[str, str]) -> dict[str, Any]:
    return {"onDemandScan": True, "tag": image}


def _specs(image: dict[str, str]) -> dict[str, Any]:
    return {
        "specifications": [spec(f"http://{image['registry']}", image["repo"].split("/")[0] + "/*")]
    }


def _spare_token(api: Api) -> str:
    return str(issue_token(api, "viewer", team="spare")["id"])


CASES = [
    Case("POST", "/registry/scan", "operator", body=_on_demand),
    Case("POST", "/registry/scan/bulk", "operator", body=lambda i: {"images": [i]}),
    Case("POST", "/registry/stop", "operator"),
    Case("GET", "/registry", "viewer"),
    Case("GET", "/registry/download", "viewer"),
    Case("GET", "/registry/progress", "viewer"),
    Case("GET", "/statuses/registry", "viewer"),
    Case("GET", "/registry/scans", "viewer"),
    Case("GET", "/registry/scans/{id}", "viewer", prepare=lambda api: str(_latest_job(api))),
    Case("GET", "/settings/registry", "viewer"),
    Case("PUT", "/settings/registry?scanLater=true", "admin", body=_specs),
    Case("GET", "/credentials", "admin"),
    Case("DELETE", "/credentials/none-such", "admin", ok=404),
    Case("GET", "/credentials/none-such/usages", "admin", ok=404),
    Case("GET", "/registry/names", "viewer"),
    Case("GET", "/tokens", "admin"),
    Case("POST", "/tokens", "admin", body=lambda _i: {"name": "n", "team": "t", "role": "viewer"}),
    Case("DELETE", "/tokens/{id}", "admin", prepare=_spare_token),
    Case("GET", "/callbacks/key", "operator"),
]


def _latest_job(api: Api) -> int:
    return api.get(f"{V1}/registry/scans").json()[0]["id"]


def _expected(case: Case, caller: str) -> int:
    if caller == "anonymous":
        return 401
    allowed = CALLERS.index(caller) <= CALLERS.index(case.least)
    return case.ok if allowed else 403


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.method} {c.path}")
def test_each_role_gets_what_its_role_allows(
    api: Api, callers: dict[str, Api], image: dict[str, str], case: Case
):
    # Given clients for each role and one without credentials
    api.scan(_on_demand(image))
    for caller, c in callers.items():
        path = case.path
        if case.prepare is not None:
            path = path.replace("{id}", case.prepare(api))
        # When each calls the endpoint
        r = c.request(case.method, V1 + path, json=case.body(image) if case.body else None)
        # Then the role decides: its answer, 403 naming the role, or 401 without credentials
        assert r.status_code == _expected(case, caller), (caller, r.text)
        if r.status_code == 403:
            assert r.json()["err"].startswith(f"role {caller} may not")


def test_every_route_of_the_app_is_closed_to_the_wrong_callers(callers: dict[str, Api]):
    # Given every route the running API serves, from its OpenAPI document
    routes = callers["admin"].get("/openapi.json").json()["paths"]
    checked = 0
    for template, methods in routes.items():
        if template in PUBLIC or "webhook" in template:
            continue
        path = template.replace("{version}", "1")
        path = "/".join("1" if p.startswith("{") else p for p in path.split("/"))
        for method in methods:
            # When a caller without credentials, and a viewer, call it
            anonymous = callers["anonymous"].request(method.upper(), path)
            viewer = callers["viewer"].request(method.upper(), path)
            # Then the first is refused as unknown, and the viewer may only read
            assert anonymous.status_code == 401, (method, path)
            if (method == "get" and template not in ADMIN_READS) or template in SELF:
                assert viewer.status_code not in (401, 403), (method, path, viewer.text)
            else:
                assert viewer.status_code == 403, (method, path, viewer.text)
            checked += 1
    assert checked >= len(CASES)


# -- tokens ----------------------------------------------------------------------------


def test_a_token_is_shown_once_and_only_its_hash_is_stored(api: Api, db):
    # Given an admin issues an operator token to a team
    made = issue_token(api, "operator", team="payments")
    token = made["token"]
    assert token.startswith("rst_") and (made["team"], made["role"]) == ("payments", "operator")

    # When the tokens are listed
    listed = [t for t in api.get(f"{V1}/tokens").json() if t["id"] == made["id"]]

    # Then the listing shows its prefix only, and the database holds its SHA-256, not it
    assert listed == [{k: v for k, v in made.items() if k != "token"}]
    assert token.startswith(listed[0]["prefix"]) and len(listed[0]["prefix"]) < len(token)
    with db() as session:
        row = session.get(ApiToken, made["id"])
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        stored = [str(getattr(row, c.key)) for c in ApiToken.__table__.columns]
    assert not any(token in value for value in stored)


def test_a_revoked_token_is_refused(stack: Stack, api: Api):
    # Given a viewer token that works
    made = issue_token(api, "viewer")
    c = client(stack, made["token"])
    assert c.get(f"{V1}/registry/scans").status_code == 200

    # When an admin revokes it
    r = api.request("DELETE", f"{V1}/tokens/{made['id']}")
    assert r.status_code == 200 and r.json()["revokedAt"]

    # Then requests with it are refused as unauthenticated, saying so
    refused = c.get(f"{V1}/registry/scans")
    assert refused.status_code == 401 and "revoked" in refused.json()["err"]
    unknown = client(stack, "rst_not-a-token").get(f"{V1}/registry/scans")
    assert unknown.status_code == 401


# -- idempotency -----------------------------------------------------------------------


def jobs_of(db, team: str) -> int:
    """How many jobs the database holds for ``team``."""
    with db() as session:
        stmt = select(func.count()).select_from(ScanJob).where(ScanJob.team == team)
        return session.scalar(stmt)


def test_the_same_key_twice_gives_the_same_job(stack: Stack, api: Api, image, db):
    # Given an operator of team A
    team = f"team-{uuid.uuid4().hex[:6]}"
    op = client(stack, issue_token(api, "operator", team=team)["token"])
    key = {"Idempotency-Key": uuid.uuid4().hex}

    # When it asks for the same on-demand scan twice with one key
    first = op.post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)
    again = op.post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)

    # Then both answers are the same body, for one job, of that team
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert jobs_of(db, team) == 1

    # And the key with another body is refused, saying why
    other = {**_on_demand(image), "tag": {**image, "tag": "2.0"}}
    refused = op.post(f"{V1}/registry/scan", json=other, headers=key)
    assert refused.status_code == 422 and "different request" in refused.json()["err"]

    # And another team with the same key gets a job of its own
    other_team = client(stack, issue_token(api, "operator", team=f"{team}-b")["token"])
    theirs = other_team.post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)
    assert theirs.status_code == 200 and theirs.json()["id"] != first.json()["id"]
    api.wait_job(first.json()["id"])
    api.wait_job(theirs.json()["id"])


def test_concurrent_requests_with_one_key_make_one_job(stack: Stack, api: Api, image, db):
    # Given a team's operator and one key
    team = f"team-{uuid.uuid4().hex[:6]}"
    token = issue_token(api, "operator", team=team)["token"]
    key = {"Idempotency-Key": uuid.uuid4().hex}

    # When twelve requests with it arrive at once
    def ask(_n: int) -> requests.Response:
        return client(stack, token).post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))

    # Then every one is answered with the same job, and only one job exists
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert jobs_of(db, team) == 1
    api.wait_job(answers[0].json()["id"])


def test_expired_keys_and_old_push_events_are_forgotten(stack: Stack, api: Api, image, db):
    # Given a key used just now, and a key and push events stored long ago
    team = f"team-{uuid.uuid4().hex[:6]}"
    op = client(stack, issue_token(api, "operator", team=team)["token"])
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = op.post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)
    now = utcnow()
    with transaction(db) as session:
        session.add_all(
            [
                IdempotencyKey(
                    team=team, key="old", request_hash="x", response={}, created_at=now - WINDOW
                ),
                WebhookEvent(event_id=f"{team}-old", source="distribution", outcome="scanned",
                             received_at=now - timedelta(days=8)),
                WebhookEvent(event_id=f"{team}-new", source="distribution", outcome="scanned",
                             received_at=now - timedelta(days=6)),
            ]
        )  # fmt: skip

    # When the workers' hourly housekeeping runs
    prune(db)

    # Then the expired key and the week-old event are gone, the others are kept
    with db() as session:
        keys_left = session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.team == team))
        assert list(keys_left) == [key["Idempotency-Key"]]
        events = select(WebhookEvent.event_id).where(WebhookEvent.event_id.startswith(team))
        assert list(session.scalars(events)) == [f"{team}-new"]
    # And the key in its window still gives the same job
    again = op.post(f"{V1}/registry/scan", json=_on_demand(image), headers=key)
    assert again.json()["id"] == first.json()["id"]
    api.wait_job(first.json()["id"])


# -- bulk ------------------------------------------------------------------------------


def test_bulk_of_fifty_images_makes_fifty_jobs_that_complete(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given fifty images in scope, and one image outside it
    for i in range(50):
        pusher.push_image(f"{name}/svc", f"v{i}", {"n": str(i).encode()})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    images = [{"registry": registry.host, "repo": f"{name}/svc", "tag": f"v{i}"} for i in range(50)]
    outside = {"registry": registry.host, "repo": "elsewhere/app", "tag": "1"}
    key = {"Idempotency-Key": uuid.uuid4().hex}

    # When they are asked for in one bulk request, twice with one key
    body = {"images": [*images, outside]}
    r = api.post(f"{V1}/registry/scan/bulk", json=body, headers=key)
    again = api.post(f"{V1}/registry/scan/bulk", json=body, headers=key)

    # Then there is one job per image in scope, the other says why not, and the
    # repeated request gets the same jobs
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["queued"], answer["refused"]) == (50, 1)
    ids = [e["id"] for e in answer["images"][:50]]
    assert len(set(ids)) == 50
    assert "err" in answer["images"][50] and "elsewhere/app" in answer["images"][50]["err"]
    assert again.json() == answer

    # And every job completes
    for job_id in ids:
        assert api.wait_job(job_id, timeout=120)["status"] == "completed"


def test_a_bulk_request_over_a_thousand_images_is_refused(api: Api, registry: RegistryServer):
    images = [{"registry": registry.host, "repo": "a/b", "tag": f"t{i}"} for i in range(1001)]
    r = api.post(f"{V1}/registry/scan/bulk", json={"images": images})
    assert r.status_code == 400 and "more than 1000" in r.json()["err"]


# -- callbacks -------------------------------------------------------------------------


class Receiver:
    """An HTTP server on loopback that records callbacks and answers from a script."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.calls: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), body))
                self.send_response(outer.answers.pop(0) if outer.answers else 200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # By name: the stack allows callbacks to "localhost" (loopback addresses are refused)
        self.url = f"http://localhost:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The callback's JSON, after checking its signature as a receiver would: under its
    team's key."""
    signed = headers["X-Regscan-Timestamp"].encode() + b"." + body
    key = team_key(CALLBACK_SECRET, headers["X-Regscan-Team"])
    expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Regscan-Signature"], f"sha256={expected}")
    return json.loads(body)


def test_callbacks_carry_the_signed_final_state(api: Api, image, receiver: Receiver):
    # Given an on-demand and a regular scan, each asked with a callbackUrl
    on_demand = api.scan({**_on_demand(image), "callbackUrl": receiver.url}).json()
    api.wait_job(on_demand["id"])
    regular = api.scan({"tag": image, "callbackUrl": receiver.url}).json()

    # When they end
    api.wait_job(regular["id"])
    wait_for(lambda: len(receiver.calls) == 2, 30, "both callbacks")

    # Then each receives its job's final state, signed over timestamp and body
    states = {s["id"]: s for s in (verified(h, b) for h, b in receiver.calls)}
    assert states[on_demand["id"]]["status"] == "completed"
    assert states[on_demand["id"]]["kind"] == "on-demand"
    assert states[regular["id"]]["kind"] == "regular-image"
    assert states[regular["id"]]["counts"]["scanned"] == 1
    # And the delivery shows on the job
    shown = api.job(on_demand["id"])["callbacks"]
    assert [(c["attempt"], c["statusCode"], c["url"]) for c in shown] == [(1, 200, receiver.url)]


def test_a_failing_receiver_is_retried_and_every_attempt_shows(api: Api, image):
    # Given a receiver that fails twice before taking the callback
    receiver = Receiver(answers=[500, 500, 200])
    try:
        # When a scan with its callbackUrl ends
        job = api.scan({**_on_demand(image), "callbackUrl": receiver.url}).json()
        api.wait_job(job["id"])

        # Then three attempts are made and recorded on the job, the last one taken
        def three() -> list[dict[str, Any]] | None:
            calls = api.job(job["id"])["callbacks"]
            return calls if len(calls) == 3 else None

        calls = wait_for(three, 60, "three callback attempts")
    finally:
        receiver.close()
    assert [(c["attempt"], c["statusCode"]) for c in calls] == [(1, 500), (2, 500), (3, 200)]
    assert "HTTP 500" in calls[0]["error"] and calls[2]["error"] == ""
    assert len(receiver.calls) == 3
    assert all(verified(h, b)["id"] == job["id"] for h, b in receiver.calls)


def test_a_callback_lost_before_it_was_published_is_sent_again(
    api: Api, stack: Stack, image, receiver: Receiver
):
    # Given no callbacks worker, so a job's callback message waits in its queue
    stack.terminate("callbacks")
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    try:
        job = api.scan({**_on_demand(image), "callbackUrl": receiver.url}).json()
        api.wait_job(job["id"])
        wait_for(lambda: redis.llen(tasks.QUEUE_CALLBACKS) == 1, 10, "the callback message")
        # When the message is lost, as when the worker ending the job dies before it
        # publishes the callback
        redis.delete(tasks.QUEUE_CALLBACKS)
        # And a worker comes up that looks for such callbacks after two seconds
        stack.start_worker("callbacks", "callbacks", env={"REGSCAN_CALLBACK_RESEND_SECONDS": "2"})

        # Then the receiver gets the callback, once, and the job shows the delivery
        wait_for(lambda: len(receiver.calls) == 1, 30, "the callback sent again")
        assert verified(*receiver.calls[0])["id"] == job["id"]
        time.sleep(3)  # three more passes of the worker: it is not sent again
        assert len(receiver.calls) == 1
        shown = api.job(job["id"])["callbacks"]
        assert [(c["attempt"], c["statusCode"]) for c in shown] == [(1, 200)]
    finally:
        # The other tests' callbacks worker, with the usual settings.
        if "callbacks" in stack.procs:
            stack.terminate("callbacks")
        stack.start_worker("callbacks", "callbacks")


def test_a_callback_url_must_be_http(api: Api, image):
    r = api.scan({**_on_demand(image), "callbackUrl": "file:///etc/passwd"})
    assert r.status_code == 400 and "callbackUrl" in r.json()["err"]
