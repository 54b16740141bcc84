"""What a security review of the API found, each kept closed: callers with a viewer or
operator token (or none) trying to do more than their role allows, reach what they
should not, or make the service fail.

Each test names the finding it keeps closed (S1 to S10, as the review numbered them).
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis
from sqlalchemy import select

from core import keys
from core.callbacks import team_key
from models import ScanJob
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import ADMIN, CALLBACK_SECRET, WEBHOOK_SECRET, Api, Stack, wait_for
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
HUGE_NUMBER = b'{"onDemandScan": ' + b"9" * 5000 + b"}"
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


@pytest.mark.parametrize("field", ["name", "team"])
def test_s5_a_token_name_or_team_is_one_line(api: Api, field: str):
    # A team is sent in the X-Regscan-Team header of callbacks and written to logs
    body = {"name": "ci", "team": "build", "role": "operator", field: "x\r\nX-Injected: 1"}
    r = api.post(V1 + "/tokens", json=body)
    assert r.status_code == 400, r.text
    assert "U+000D" in r.json()["err"]


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/tokens", {"name": "n" * 125, "team": "t", "role": "viewer"}),
        ("POST", "/settings/scan", {"cron": "0 " * 100 + "*"}),
        ("POST", "/settings/scan", {"timezone": "Europe/" + "x" * 100}),
        ("PUT", "/settings/registry", {"specifications": [spec("r" * 300 + ".example")]}),
        (
            "PUT",
            "/settings/registry",
            {"specifications": [spec("r.example", credentialID="c" * 300)]},
        ),
    ],
)
def test_s5_strings_too_long_to_store_are_refused_clearly(
    api: Api, method: str, path: str, body: dict
):
    r = api.request(method, V1 + path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["err"]


def test_s5_a_nul_in_basic_credentials_is_an_invalid_login(stack: Stack):
    anon = Api(stack.api.base, auth=("ad\x00min", "x"))
    assert anon.get(f"{V1}/registry").status_code == 401


# -- S6: bodies bounded, and read only after authentication --------------------------------


def _viewer_seconds(viewer: Api) -> float:
    started = time.monotonic()
    assert viewer.get(f"{V1}/registry/scans?limit=1").status_code == 200
    return time.monotonic() - started


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


# -- S3: callbacks are not a way into the network regscan runs in ----------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://127.0.0.1:6379/", "not public"),
        ("http://169.254.169.254/latest/meta-data/", "not public"),
        ("http://10.1.2.3/hook", "not public"),
        ("http://100.64.0.1/hook", "not public"),
        ("http://0.0.0.0:8080/", "not public"),
        ("http://[::1]/hook", "not public"),
        ("http://[::ffff:127.0.0.1]/hook", "not public"),
        ("http://2130706433/hook", "not public"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "not public"),
        ("http://[2002:7f00:1::1]/hook", "not public"),
        ("http://user:pass@localhost/hook", "credentials"),
        ("ftp://localhost/hook", "http"),
    ],
)
def test_s3_callbacks_to_internal_addresses_are_refused_when_asked(
    api: Api, scope: str, registry: RegistryServer, url: str, why: str
):
    before = api.get(f"{V1}/registry/scans").headers["Total-Count"]
    r = api.scan({**on_demand(registry.host, scope, "3.19"), "callbackUrl": url})
    assert r.status_code == 400, r.text
    assert why in r.json()["err"]
    assert api.get(f"{V1}/registry/scans").headers["Total-Count"] == before


class Receiver:
    """A callback receiver on loopback (reached as "localhost", which the test stack
    allows) answering ``status`` with ``body``."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append((dict(self.headers), data))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(status=404, body=b"INTERNAL-ONLY-DATA " * 1000)
    yield r
    r.close()


def _deliveries(api: Api, job_id: int, n: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    def made() -> list[dict[str, Any]] | None:
        calls = api.job(job_id)["callbacks"]
        return calls if len(calls) >= n else None

    return wait_for(made, timeout, f"{n} callback attempts of job {job_id}")


def test_s3_a_receivers_answer_is_not_kept(
    api: Api, scope: str, registry: RegistryServer, receiver: Receiver
):
    job = api.started({**on_demand(registry.host, scope, "3.19"), "callbackUrl": receiver.url()})
    api.wait_job(job)
    first = _deliveries(api, job)[0]
    assert (first["statusCode"], first["error"]) == (404, "HTTP 404")


def test_s3_a_destination_checked_when_asked_is_checked_again_when_sent(
    api: Api, stack: Stack, scope: str, registry: RegistryServer, receiver: Receiver, db
):
    # Given a finished job whose callback URL now points at a loopback address (as when
    # a name resolved to a public address when asked, and to loopback when sent)
    job = api.started(on_demand(registry.host, scope, "3.19"))
    api.wait_job(job)
    with db() as session, session.begin():
        session.get_one(ScanJob, job).callback_url = receiver.url("127.0.0.1")

    # When its callback is sent
    from core.settings import Settings
    from core.tasks import Publisher, make_celery

    Publisher(make_celery(Settings(redis_url=stack.env["REGSCAN_REDIS_URL"]))).callback(job)

    # Then it is refused, and the receiver never hears of it
    refused = _deliveries(api, job)[0]
    assert "not public" in refused["error"] and refused["statusCode"] is None
    assert receiver.calls == []


def test_s3_an_unreachable_receiver_says_nothing_of_why(
    api: Api, scope: str, registry: RegistryServer
):
    closed = f"http://localhost:{_free_closed_port()}/hook"
    job = api.started({**on_demand(registry.host, scope, "3.19"), "callbackUrl": closed})
    api.wait_job(job)
    first = _deliveries(api, job)[0]
    assert first["error"] == "receiver unreachable"


def _free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_s3_a_receiver_trickling_its_answer_is_cut_off_at_the_deadline(
    api: Api, scope: str, registry: RegistryServer
):
    # Given a receiver that answers one byte a second, for ever
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                    if stop.wait(1):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # When a job with it as callbackUrl ends
        url = f"http://localhost:{port}/hook"
        job = api.started({**on_demand(registry.host, scope, "3.19"), "callbackUrl": url})
        ended = time.monotonic()
        api.wait_job(job)

        # Then the first attempt ends at the callback timeout (10 s), not later
        [first] = _deliveries(api, job, timeout=25)
        assert time.monotonic() - ended < 10 + 8
        assert first["error"] == "receiver unreachable"
    finally:
        stop.set()
        listener.close()


def test_s3_each_team_signs_with_a_key_of_its_own(
    stack: Stack, api: Api, scope: str, registry: RegistryServer
):
    import hashlib
    import hmac

    receiver = Receiver()
    try:
        teams = {}
        for team in ("alpha", "beta"):
            operator = client(stack, issue_token(api, "operator", team=team)["token"])
            key = operator.get(f"{V1}/callbacks/key").json()
            assert key["team"] == team
            assert operator.get(f"{V1}/callbacks/key?team=other").status_code == 403
            body = {**on_demand(registry.host, scope, "3.19"), "callbackUrl": receiver.url()}
            teams[team] = (operator.scan(body).json()["id"], key["key"].encode())
        wait_for(lambda: len(receiver.calls) == 2, 60, "both callbacks")

        def signed_with(key: bytes, headers: dict[str, str], data: bytes) -> bool:
            message = headers["X-Regscan-Timestamp"].encode() + b"." + data
            mac = "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()
            return hmac.compare_digest(headers["X-Regscan-Signature"], mac)

        for headers, data in receiver.calls:
            team = headers["X-Regscan-Team"]
            mine, theirs = teams[team][1], teams["beta" if team == "alpha" else "alpha"][1]
            assert json.loads(data)["id"] == teams[team][0]
            assert signed_with(mine, headers, data) and not signed_with(theirs, headers, data)
            assert mine == team_key(CALLBACK_SECRET, team)
    finally:
        receiver.close()


# -- S4: failed logins are limited, and cost the same whoever they name --------------------


def _login_seconds(api: Api, user: str) -> float:
    started = time.monotonic()
    r = requests.get(api.base + f"{V1}/registry", auth=(user, "wrong"), timeout=30)
    assert r.status_code == 401, r.text
    return time.monotonic() - started


def _wrong_login(api: Api, forwarded_for: str) -> int:
    r = requests.get(
        api.base + f"{V1}/registry",
        auth=("xff-guesser", "wrong"),
        headers={"X-Forwarded-For": forwarded_for},
        timeout=30,
    )
    return r.status_code


def _forget_failed_logins(stack: Stack) -> None:
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    for key in redis.scan_iter(keys.login_failures_of_client("*")):
        redis.delete(key)


def test_s4_a_client_cannot_name_itself_anew_with_each_guess(
    stack: Stack, request: pytest.FixtureRequest
):
    # Given an API with no trusted proxies, and one that trusts the local address (and
    # no failed logins counted yet from this host)
    _forget_failed_logins(stack)
    request.addfinalizer(lambda: _forget_failed_logins(stack))
    direct = stack.start_another_api("direct-api", env={"REGSCAN_LOGIN_FAILURES": "10"})
    proxied = stack.start_another_api(
        "proxied-api",
        env={"REGSCAN_LOGIN_FAILURES": "10", "REGSCAN_TRUSTED_PROXIES": "127.0.0.1"},
    )

    # When a client makes eleven wrong guesses, each saying it is forwarded for another
    # address
    direct_answers = [_wrong_login(direct, f"203.0.113.{n}") for n in range(11)]

    # Then the header is not believed: the eleventh is refused as the same client's
    assert direct_answers == [401] * 10 + [429]
    # ... unless it comes from a trusted proxy, whose clients are counted apart
    assert [_wrong_login(proxied, "198.51.100.7") for _ in range(11)] == [401] * 10 + [429]
    assert _wrong_login(proxied, "198.51.100.8") == 401


def test_s4_a_flood_of_wrong_passwords_is_refused_and_leaves_other_users_served(
    stack: Stack, api: Api
):
    # Given an API process with the default login limits (10 failures a minute per client)
    strict = stack.start_another_api("strict-api", env={"REGSCAN_LOGIN_FAILURES": "10"})
    viewer_token = issue_token(api, "viewer")["token"]
    viewer = Api(strict.base, auth=None)
    viewer.http.headers["Authorization"] = f"Bearer {viewer_token}"
    try:
        # An unknown user takes as long to refuse as a known one (no enumeration by time)
        known = sorted(_login_seconds(strict, ADMIN[0]) for _ in range(3))[1]
        unknown = sorted(_login_seconds(strict, "nobody-at-all") for _ in range(3))[1]
        assert 0.5 < unknown / known < 2, (known, unknown)
        before = _rss_mib(stack.procs["strict-api"].pid)
        quiet = sorted(_viewer_seconds(viewer) for _ in range(15))[7]

        # When 300 wrong passwords arrive from 30 threads while a viewer keeps working
        answers: list[int] = []
        latencies: list[float] = []
        done = threading.Event()

        def flood() -> None:
            with requests.Session() as s:
                for _ in range(10):
                    r = s.get(strict.base + f"{V1}/registry", auth=(ADMIN[0], "guess"), timeout=60)
                    answers.append(r.status_code)

        def keep_working() -> None:
            while not done.is_set():
                latencies.append(_viewer_seconds(viewer))
                time.sleep(0.05)

        watcher = threading.Thread(target=keep_working)
        watcher.start()
        threads = [threading.Thread(target=flood) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        watcher.join()

        # Then past the limit they are answered 429, the viewer's requests stay fast, and
        # the process does not grow with the flood
        assert sorted(set(answers)) == [401, 429], answers
        assert answers.count(401) <= 10 - 6  # the six timed above count too
        # (bench/logins.py measures it on a quiet machine: under 100 ms; a test on a
        # busy machine only checks the viewer is not held up behind the flood, against
        # its own requests just before it)
        latencies.sort()
        assert latencies[len(latencies) // 2] < max(0.25, 4 * quiet), (quiet, latencies)
        assert _rss_mib(stack.procs["strict-api"].pid) - before < 300
        refused = requests.get(strict.base + f"{V1}/registry", auth=(ADMIN[0], "x"), timeout=10)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    finally:
        stack.terminate("strict-api")


# -- S8: what each caller sees of others' callbacks, and of a registry's words ---------------


def test_s8_viewers_see_only_their_own_teams_callback_deliveries(
    stack: Stack, api: Api, scope: str, registry: RegistryServer
):
    receiver = Receiver()
    try:
        alpha = client(stack, issue_token(api, "operator", team="alpha")["token"])
        body = {**on_demand(registry.host, scope, "3.19"), "callbackUrl": receiver.url()}
        job = alpha.scan(body).json()["id"]
        api.wait_job(job)
        _deliveries(api, job)
        own = client(stack, issue_token(api, "viewer", team="alpha")["token"])
        other = client(stack, issue_token(api, "viewer", team="beta")["token"])

        assert [c["url"] for c in own.job(job)["callbacks"]] == [receiver.url()]
        assert other.job(job)["callbacks"] == []
    finally:
        receiver.close()


class EchoingRegistry:
    """A hostile registry that refuses everything, echoing the request's Authorization
    header in its error message and its status line's reason phrase."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                said = self.headers.get("Authorization", "")
                body = json.dumps({"errors": [{"code": "DENIED", "message": said}]}).encode()
                self.send_response(403, f"Forbidden {said}")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_s8_a_registry_echoing_our_credentials_does_not_get_them_into_errors():
    import base64

    from scanner.errors import RegistryAuthError
    from scanner.registry.client import RegistryClient

    registry = EchoingRegistry()
    secret = "s3cr3t-registry-password"
    try:
        with (
            RegistryClient(registry.url, auth=("robot", secret), retries=0) as c,
            pytest.raises(RegistryAuthError) as refused,
        ):
            c.get_manifest("app", "1")
    finally:
        registry.close()
    said = str(refused.value)
    assert "access denied (403): DENIED" in said
    assert secret not in said and base64.b64encode(f"robot:{secret}".encode()).decode() not in said


# -- S9: a spreadsheet opening the CSV runs nothing ----------------------------------------


def test_s9_csv_cells_that_a_spreadsheet_would_run_are_quoted(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given an image whose os-release names its distribution as a formula
    os_release = b'ID=evil\nNAME="=HYPERLINK(\\"http://x\\")"\nPRETTY_NAME="=1+2"\n'
    pusher.push_image(f"{name}/app", "1", {"etc/os-release": os_release})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    api.wait_job(api.started(on_demand(registry.host, f"{name}/app", "1")))

    # When the results are downloaded as CSV
    r = api.get(f"{V1}/registry/download", params={"repository": f"{name}/app"})
    rows = list(__import__("csv").reader(io.StringIO(r.text)))

    # Then the distro cell reads as text
    distro = rows[0].index("Distro")
    assert rows[1][distro] == "'=1+2"


# -- S10: the database file is the service's alone ------------------------------------------


def test_s10_the_sqlite_file_is_readable_by_its_owner_only(tmp_path: Path):
    import subprocess
    import sys

    database = tmp_path / "regscan.db"
    env = {**os.environ, "REGSCAN_DATABASE_URL": f"sqlite:///{database}"}
    subprocess.run([sys.executable, "-m", "regscan.cli", "db", "upgrade"], env=env, check=True)
    assert stat.S_IMODE(database.stat().st_mode) & 0o077 == 0


def test_s10_compose_publishes_on_loopback_only_and_requires_every_secret():
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    env = compose["x-regscan"]["environment"]
    for secret in ("REGSCAN_ADMIN_PASSWORD", "REGSCAN_SECRET_KEY", "REGSCAN_CALLBACK_SECRET"):
        assert env[secret].startswith("${" + secret + ":?"), secret
