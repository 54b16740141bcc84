"""What a security review of the API found, each kept closed: callers with a viewer or
operator token (or none) trying to do more than their role allows, reach what they
should not, or make the service fail.

Each test names the finding it keeps closed (S1 to S10, as the review numbered them).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from models import ScanJob
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import ADMIN, WEBHOOK_SECRET, Api, Stack
from tests.test_enqueue import client, issue_token

V1 = "/api/v1"


def spec(registry: str, repository: str = "", **extra: Any) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def on_demand(registry: str, repo: str, tag: str = "", digest: str = "") -> dict[str, Any]:
    return {
        "onDemandScan": True,
        "tag": {"registry": registry, "repo": repo, "tag": tag, "digest": digest},
    }


@pytest.fixture
def scope(api: Api, pusher: Pusher, registry: RegistryServer, name: str) -> str:
    """Two tags of one repository in scope; the repository's name."""
    pusher.push_image(f"{name}/app", "3.19", {"v": b"3.19"})
    pusher.push_image(f"{name}/app", "3.20", {"v": b"3.20"})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    return f"{name}/app"


# -- S1: the webhook secret starts scans, so it is the admins' ---------------------------


def test_s1_viewers_do_not_see_the_webhook_secret(stack: Stack, api: Api):
    viewer = client(stack, issue_token(api, "viewer")["token"])
    operator = client(stack, issue_token(api, "operator")["token"])

    shown = {
        who: c.get(f"{V1}/settings/registry").json()["webhookUrlSuffix"]
        for who, c in (("admin", api), ("operator", operator), ("viewer", viewer))
    }

    assert shown == {"admin": f"?secret={WEBHOOK_SECRET}", "operator": "", "viewer": ""}


def test_s1_push_events_scan_for_a_team_of_their_own(
    api: Api, scope: str, registry: RegistryServer, db
):
    # When a registry notifies a push
    event = {
        "id": f"evt-{scope}",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "repository": scope,
            "tag": "3.19",
            "url": f"http://{registry.host}/v2/{scope}/manifests/3.19",
        },
    }
    r = api.post(
        f"{V1}/registry/webhook/webhook",
        json={"events": [event]},
        headers={"X-Regscan-Webhook-Secret": WEBHOOK_SECRET},
        auth=None,
    )
    assert r.status_code == 200, r.text
    [job_id] = r.json()["jobs"]

    # Then its scan counts against the webhook team (its limit, its fair share)
    with db() as session:
        assert session.scalar(select(ScanJob.team).where(ScanJob.id == job_id)) == "webhook"


# -- S2: a tag and a digest must agree ---------------------------------------------------


def test_s2_a_tag_with_another_tags_digest_is_refused_and_stores_nothing_under_it(
    api: Api, scope: str, registry: RegistryServer
):
    # Given both tags scanned by name
    for tag in ("3.19", "3.20"):
        api.wait_job(api.started(on_demand(registry.host, scope, tag)))
    [old] = api.results(name=f"{registry.host}/{scope}:3.19")
    [new] = api.results(name=f"{registry.host}/{scope}:3.20")

    # When an on-demand scan names tag 3.20 with the digest of 3.19
    job = api.wait_job(api.started(on_demand(registry.host, scope, "3.20", old["digest"])))

    # Then it fails saying they disagree, and 3.20 still shows its own image
    assert job["status"] == "failed"
    assert "tag 3.20" in job["error"] and "points at" in job["error"]
    [still] = api.results(name=f"{registry.host}/{scope}:3.20")
    assert still["digest"] == new["digest"] != old["digest"]


def test_s2_a_digest_alone_cannot_pass_a_tag_filter(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given a specification that leaves out the "secret" tags
    hidden = pusher.push_image(f"{name}/app", "secret", {"s": b"1"})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*", excludedTags=["secret*"]))

    # When the excluded image is asked for by its digest alone
    r = api.scan(on_demand(registry.host, f"{name}/app", digest=hidden.digest))

    # Then it is out of scope, saying to name the tag
    assert r.status_code == 403, r.text
    assert "name the tag" in r.json()["err"]


# -- S5: no server error from any input --------------------------------------------------

DEEP = b"[" * 100_000
HUGE_NUMBER = b'{"onDemandScan": ' + b"9" * 4300 + b"}"
NUL_TEXT = json.dumps(on_demand("reg.example", "app\u0000x", "1")).encode()


@pytest.mark.parametrize(
    "path",
    ["/authenticate", "/registry/scan", "/registry/webhook/webhook?secret=" + WEBHOOK_SECRET],
)
@pytest.mark.parametrize("body", [DEEP, HUGE_NUMBER, NUL_TEXT], ids=["deep", "huge", "nul"])
def test_s5_hostile_bodies_are_refused_clearly(api: Api, path: str, body: bytes):
    r = api.post(V1 + path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["err"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/registry?offset=9223372036854775808"),
        ("GET", "/registry/scans?offset=9223372036854775807"),
        ("GET", "/registry/scans/9223372036854775807"),
        ("GET", "/registry/scans/2147483648"),
        ("GET", "/registry/progress?onDemand=true&registry=ftp://x&repo=a&tag=1"),
        ("GET", "/registry?name=reg.example/app%00:1"),
        ("DELETE", "/tokens/9223372036854775807"),
    ],
)
def test_s5_out_of_range_and_malformed_queries_are_refused_clearly(
    api: Api, method: str, path: str
):
    r = api.request(method, V1 + path)
    assert r.status_code == 400, r.text
    assert r.json()["err"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/settings/scan", {"registryScanPeriodMs": 2**63}),
        ("/settings/registry", {"specifications": [spec("reg.example", cap=2**63)]}),
        ("/settings/registry", {"specifications": [spec("reg.example", cap=2**31)]}),
    ],
)
def test_s5_numbers_out_of_bounds_are_refused_clearly(api: Api, path: str, body: dict):
    r = api.request("POST" if path.endswith("scan") else "PUT", V1 + path, json=body)
    assert r.status_code == 400, r.text


def test_s5_a_nul_in_basic_credentials_is_an_invalid_login(stack: Stack):
    anon = Api(stack.api.base, auth=("ad\x00min", "x"))
    assert anon.get(f"{V1}/registry").status_code == 401


# -- S6: bodies bounded, and read only after authentication --------------------------------


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _api_rss_mib(stack: Stack) -> float:
    return _rss_mib(stack.procs["api"].pid)


def _raw_post(base: str, path: str, announced: int, sent: bytes) -> int:
    """POST announcing ``announced`` bytes but sending ``sent``; the answer's status."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {announced}\r\n"
        sock.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n" + sent)
        answer = sock.makefile("rb").readline()
    return int(answer.split()[1])


def test_s6_a_huge_body_is_refused_before_it_is_read(stack: Stack):
    before = _api_rss_mib(stack)

    # When 200 MB are announced, or streamed without a length, by nobody logged in
    announced = _raw_post(stack.api.base, f"{V1}/registry/scan", 200 << 20, b"x" * 1000)
    streamed = requests.post(
        stack.api.base + f"{V1}/registry/scan",
        data=iter([b"x" * (1 << 20)] * 200),
        timeout=60,
    )

    # Then the first is answered 413 at once, the second 401 (authentication comes before
    # the body) or 413, and the API did not take the bytes in
    assert announced == 413
    assert streamed.status_code in (401, 413), streamed.text
    assert _api_rss_mib(stack) - before < 50


# -- S10: loose edges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("repository", "app\u0000*"),
        ("repository", "app\u202e*"),
        ("tag", "v1\u2066"),
        ("excludedTags", ["x\u0000"]),
    ],
)
def test_s10_patterns_with_control_characters_are_refused(api: Api, field: str, value: Any):
    r = api.put(
        f"{V1}/settings/registry?scanLater=true",
        json={"specifications": [{**spec("reg.example", "app"), field: value}]},
    )
    assert r.status_code == 400, r.text


def test_s10_a_configuration_is_bounded(api: Api):
    many = {"specifications": [spec("reg.example", f"app{i}") for i in range(5000)]}
    r = api.put(f"{V1}/settings/registry?scanLater=true", json=many)
    assert r.status_code == 400, r.text


def test_s10_a_json_null_body_starts_nothing(api: Api):
    before = api.get(f"{V1}/registry/scans").headers["Total-Count"]
    r = api.post(f"{V1}/registry/scan", data=b"null", headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert api.get(f"{V1}/registry/scans").headers["Total-Count"] == before


def test_s10_no_docs_from_a_public_cdn_and_no_caching_of_answers(stack: Stack, api: Api):
    for path in ("/docs", "/redoc"):
        assert requests.get(stack.api.base + path, timeout=10).status_code == 404
    assert requests.get(stack.api.base + "/openapi.json", timeout=10).status_code == 401
    assert "paths" in api.get("/openapi.json").json()
    token = api.post(f"{V1}/authenticate", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert token.headers["Cache-Control"] == "no-store"
    assert api.get(f"{V1}/settings/registry").headers["Cache-Control"] == "no-store"
