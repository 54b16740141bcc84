"""The HTTP API as other teams' scripts meet it: versions, auth, errors, settings, results."""

from __future__ import annotations

import pytest
import requests
from redis import Redis

from core import keys
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import ADMIN, Api, Stack


def spec(registry: str, repository: str = "", **extra) -> dict:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


def scan_count(api: Api) -> int:
    return int(api.get("/api/v1/registry/scans").headers["Total-Count"])


# -- versions and authentication ------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "22.06", "34.04"])
def test_every_reference_version_serves_the_api(api: Api, version: str):
    r = api.get(f"/api/v{version}/registry")
    assert r.status_code == 200 and "Total-Count" in r.headers


def test_an_unknown_version_is_a_clear_404(api: Api):
    r = api.get("/api/vlatest/registry")
    assert r.status_code == 404
    assert "unknown API version 'latest'" in r.json()["err"]


def test_requests_without_valid_credentials_are_refused(stack: Stack):
    anonymous = Api(stack.api.base, auth=None)
    r = anonymous.get("/api/v1/registry")
    assert r.status_code == 401 and "curl -u USER" in r.json()["err"]
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    wrong = Api(stack.api.base, auth=(ADMIN[0], "not-the-password"))
    assert wrong.get("/api/v1/registry").status_code == 401
    assert anonymous.post("/api/v1/registry/scan").status_code == 401


def test_bearer_token_from_authenticate(stack: Stack):
    anonymous = Api(stack.api.base, auth=None)
    r = anonymous.post("/api/v1/authenticate", json={"username": ADMIN[0], "password": ADMIN[1]})
    assert r.status_code == 200
    token = r.json()["token"]
    ok = anonymous.get("/api/v1/registry", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    bad = anonymous.get("/api/v1/registry", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "authenticate again" in bad.json()["err"]
    refused = anonymous.post(
        "/api/v1/authenticate", json={"username": ADMIN[0], "password": "wrong"}
    )
    assert refused.status_code == 401


# -- bad input ---------------------------------------------------------------------------

BAD_SCAN_BODIES = [
    ('{"tag": {"registry": "r", "repo": "a"', "malformed JSON"),
    ("{\u201conDemandScan\u201d: true}", "typographic quotes"),
    ('{"onDemandScan": "yes", "tag": {"registry": "r.io", "repo": "a"}}', "onDemandScan"),
    ('{"tag": {"registry": "r.io", "repo": "My App"}}', "not a valid repository name"),
    ('{"tag": {"registry": "r.io", "repo": "a", "tag": "bad tag"}}', "tag"),
    ('{"tag": {"registry": "r.io", "repo": "a", "digest": "sha256:abc"}}', "digest"),
    ('{"tag": {"registry": "r.io/path", "repo": "a"}}', "has a path"),
    ('{"onDemand": true}', "onDemand: unknown field"),
    ('{"onDemandScan": true}', "needs the image"),
    ("[1, 2]", "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_SCAN_BODIES)
def test_bad_scan_requests_say_what_to_fix_and_create_nothing(api: Api, body: str, message: str):
    before = scan_count(api)
    r = api.post(
        "/api/v1/registry/scan", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["err"]
    assert scan_count(api) == before


def test_bad_specifications_are_refused_and_keep_the_configuration(api: Api, name):
    good = spec("http://127.0.0.1:5999", f"{name}/*")
    api.set_specs(good)
    for bad, message in [
        ({**good, "colections": ["x"]}, "colections: unknown field"),
        ({**good, "collections": "x"}, "collections"),
        ({**good, "cap": -1}, "cap"),
        ({**good, "scanners": "2"}, "scanners"),
        ({**good, "version": "aws"}, "not supported"),
        ({**good, "registry": "ftp://r.io"}, "use http or https"),
    ]:
        r = api.put("/api/v1/settings/registry", json={"specifications": [bad]})
        assert r.status_code == 400 and message in r.json()["err"], r.text
    stored = api.get("/api/v1/settings/registry").json()["specifications"]
    assert [s["registry"] for s in stored] == [good["registry"]]


def test_a_scan_request_stuck_behind_another_admission_is_told_to_ask_again(
    api: Api, stack: Stack, name
):
    # Given another process holding the admission of scan requests (a stuck API process)
    api.set_specs(spec("http://127.0.0.1:5999", f"{name}/*"))
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    held = redis.lock(keys.ADMISSION_LOCK, timeout=30)
    assert held.acquire(blocking=False)
    try:
        # When a regular scan is asked for
        before = scan_count(api)
        r = api.scan()

        # Then it is refused for now, saying to try again, and nothing is created
        assert r.status_code == 503, r.text
        assert "try again" in r.json()["err"] and r.headers["Retry-After"] == "1"
        assert scan_count(api) == before
    finally:
        held.release()
    # And once the admission is free, the same request is admitted
    assert api.started() > 0


def test_list_queries_are_checked(api: Api):
    assert api.get("/api/v1/registry", params={"limit": 251}).status_code == 400
    assert "limit" in api.get("/api/v1/registry", params={"limit": 0}).json()["err"]
    r = api.get("/api/v1/registry", params={"name": "no-slash"})
    assert r.status_code == 400 and "REGISTRY/REPO:TAG" in r.json()["err"]
    assert api.get("/api/v1/registry", params={"sort": "colour"}).status_code == 400
    assert api.get("/api/v1/registry/scans/999999").status_code == 404


# -- settings ------------------------------------------------------------------------


def test_put_replaces_post_appends_and_saving_starts_a_scan(api: Api, name):
    first = spec("http://127.0.0.1:5998", f"{name}/a", cap=0, scanners=3)
    api.set_specs(first)
    second = spec("127.0.0.1:5997", f"{name}/b")
    r = api.post("/api/v1/settings/registry?scanLater=true", json=second)
    assert r.status_code == 200
    stored = api.get("/api/v1/settings/registry").json()["specifications"]
    assert [(s["registry"], s["cap"], s["scanners"]) for s in stored] == [
        ("http://127.0.0.1:5998", 0, 3),
        ("127.0.0.1:5997", 5, 2),
    ]

    # Saving without scanLater starts a regular scan; while one runs, saving still works
    r = api.put("/api/v1/settings/registry", json={"specifications": [first]})
    assert r.status_code == 200 and r.json()["scan"]["kind"] == "regular-all"
    again = api.put("/api/v1/settings/registry", json={"specifications": [first]})
    assert again.status_code == 200
    body = again.json()
    assert body["specifications"][0]["registry"] == first["registry"]
    if body["scan"] is None:  # the first scan may already be over
        assert "only one regular scan runs at a time" in body["scanNotStarted"]


def test_a_registry_is_known_by_host_and_port_whatever_scheme_was_written(
    api: Api, pusher: Pusher, registry: RegistryServer, name
):
    pusher.push_image(f"{name}/app", "1", {"a": b"1"})
    api.set_specs(spec(f"HTTP://{registry.host}/", f"{name}/app"))
    for written in (registry.host, f"http://{registry.host}"):
        ask = {"registry": written, "repo": f"{name}/app", "tag": "1", "digest": ""}
        r = api.scan({"onDemandScan": True, "tag": ask})
        assert r.status_code == 200, r.text
        assert api.wait_job(r.json()["id"])["status"] == "completed"


# -- results ----------------------------------------------------------------------------


def test_results_page_sort_and_filter(api: Api, pusher: Pusher, registry: RegistryServer, name):
    images = {
        t: pusher.push_image(f"{name}/app", t, {"f": t.encode()}, created=f"2024-02-0{i + 1}")
        for i, t in enumerate(["a", "b", "c", "d"])
    }
    api.set_specs(spec(f"http://{registry.host}", f"{name}/app", cap=0))
    job = api.scan().json()
    assert api.wait_job(job["id"])["status"] == "completed"

    r = api.get("/api/v1/registry", params={"repository": f"{name}/app", "limit": 3})
    assert r.headers["Total-Count"] == "4"
    assert [x["repoTag"]["tag"] for x in r.json()] == ["a", "b", "c"]
    page2 = api.results(repository=f"{name}/app", limit=3, offset=3)
    assert [x["repoTag"]["tag"] for x in page2] == ["d"]
    rev = api.results(repository=f"{name}/app", sort="tag", reverse="true")
    assert [x["repoTag"]["tag"] for x in rev] == ["d", "c", "b", "a"]
    by_id = api.results(id=images["c"].config_digest)
    assert [x["repoTag"]["tag"] for x in by_id] == ["c"]
    one = api.results(name=f"{registry.host}/{name}/app:b")
    assert len(one) == 1 and one[0]["repoTag"]["digest"] == images["b"].digest
    for field in ("_id", "tags", "scanTime", "osDistro", "packages", "vulnerabilities", "err"):
        assert field in one[0]

    progress = api.get("/api/v1/registry/progress").json()
    assert progress[0]["isScanOngoing"] is False
    assert progress[0]["imageScan"]["total"] == 4 and progress[0]["imageScan"]["scanned"] == 4
    status = api.get("/api/v1/statuses/registry").json()
    assert status["completed"] is True and status["scanned"] == 4 and status["errors"] == []


def test_an_image_that_cannot_be_scanned_reports_why(
    api: Api, pusher: Pusher, registry: RegistryServer, name
):
    pusher.push_image(f"{name}/app", "1", {"a": b"1"})
    api.set_specs(spec(f"http://{registry.host}", f"{name}/app"))

    # An on-demand scan of a tag that does not exist fails, and says so
    r = api.scan({"onDemandScan": True, "tag": {"registry": registry.host, "repo": f"{name}/app"}})
    job = r.json()
    assert job["target"]["tag"] == "latest"  # no tag means latest
    failed = api.wait_job(job["id"])
    assert failed["status"] == "failed" and "not found (404)" in failed["error"]
    result = api.results(name=f"{registry.host}/{name}/app:latest")
    assert "not found" in result[0]["err"]
    progress = api.get(
        "/api/v1/registry/progress",
        params={"onDemand": "true", "repo": f"{name}/app", "tag": "latest"},
    ).json()
    assert progress[0]["onDemand"] is True and progress[0]["status"] == "failed"

    # A regular scan of it completes, with the image's error in its error list
    regular = api.scan({"tag": {"registry": registry.host, "repo": f"{name}/app", "tag": "2"}})
    done = api.wait_job(regular.json()["id"])
    assert done["status"] == "completed" and done["counts"]["failed"] == 1
    assert done["errors"][0]["tag"] == "2" and "not found" in done["errors"][0]["err"]


def test_the_reference_error_shape_on_unknown_paths(stack: Stack):
    r = requests.get(stack.api.base + "/api/v1/nothing-here", auth=ADMIN, timeout=10)
    assert r.status_code == 404 and "err" in r.json()
