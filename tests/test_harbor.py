"""regscan as Harbor's pluggable scanner: the adapter under /harbor, its answers checked
against the spec's OpenAPI document (v1.2, vendored in tests/fixtures/harbor/).

A token-auth registry stands in for Harbor's (a token server of this module signs the
tokens, as Harbor's core does for its robot accounts): an image is pushed, Harbor's scan
request carries the robot's credentials, and the report lists what regscan stored for
that digest. The credentials are checked to be nowhere afterwards: not in the database,
not in a log, not in Redis.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from openapi_schema_validator import OAS30Validator
from redis import Redis
from sqlalchemy import MetaData, select

from models.db import make_engine
from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import Api, Stack, wait_for
from tests.test_credentials import TokenServer
from tests.test_exports import import_record

SPEC = yaml.safe_load(
    (Path(__file__).parent / "fixtures/harbor/scanner-adapter-openapi-v1.2.yaml").read_text()
)
ROBOT = "robot$regscan"
# Unique per run, so that finding it anywhere means it leaked.
ROBOT_SECRET = f"robot-{uuid.uuid4().hex}"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
VULN_REPORT = "application/vnd.security.vulnerability.report; version=1.1"
SBOM_REPORT = "application/vnd.security.sbom.report+json; version=1.0"
CYCLONEDX = "application/vnd.cyclonedx+json"
OS_RELEASE = b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"


def robot_authorization(secret: str = ROBOT_SECRET) -> str:
    return "Basic " + base64.b64encode(f"{ROBOT}:{secret}".encode()).decode()


# -- the spec ---------------------------------------------------------------------------


def check(response: requests.Response, path: str, method: str = "get") -> Any:
    """Assert that the answer is one the spec allows for this operation: a declared
    status, a declared media type, a body its schema accepts. Returns the body."""
    declared = SPEC["paths"][path][method]["responses"]
    assert response.status_code in declared, f"{response.status_code} not in the spec"
    spec = declared[response.status_code]
    if response.status_code == 302:
        assert int(response.headers["Refresh-After"]) > 0
        return None
    if "content" not in spec:
        return None
    media_type = response.headers["content-type"]
    assert media_type in spec["content"], f"{media_type} not declared for {path}"
    body = response.json()
    schema = {**SPEC, "$ref": spec["content"][media_type]["schema"]["$ref"]}
    OAS30Validator(schema).validate(body)
    return body


# -- Harbor's registry --------------------------------------------------------------------


@dataclass
class HarborRegistry:
    """A token-auth registry with a robot account, and a pusher to it (through an open
    registry on the same storage)."""

    registry: RegistryServer
    tokens: TokenServer
    pusher: Pusher


@pytest.fixture(scope="module")
def harbor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarborRegistry]:
    workdir = tmp_path_factory.mktemp("harbor")
    storage = workdir / "storage"
    tokens = TokenServer(workdir, {ROBOT: ROBOT_SECRET})
    try:
        with (
            RegistryServer(storage_dir=storage, token_auth=tokens.registry_config()) as registry,
            RegistryServer(storage_dir=storage) as open_registry,
        ):
            yield HarborRegistry(registry, tokens, Pusher(open_registry.url))
    finally:
        tokens.close()


@dataclass
class Pushed:
    repo: str
    digest: str
    cve: str


@pytest.fixture
def pushed(api: Api, stack: Stack, harbor: HarborRegistry, name: str, tmp_path: Path) -> Pushed:
    """An image holding a Debian package with a known vulnerability, on Harbor's
    registry, inside the configuration."""
    source, cve = f"ossl{name}", f"CVE-2098-{int(name[1:], 16) % 10**7:07d}"
    affected = {
        "package": {"ecosystem": "Debian:12", "name": source},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.13-1"}]}],
    }
    import_record(
        stack,
        tmp_path,
        {
            "id": cve,
            "modified": "2026-01-01T00:00:00Z",
            "published": "2026-01-01T00:00:00Z",
            "summary": "a test vulnerability",
            "severity": [{"type": "CVSS_V3", "score": HIGH}],
            "affected": [affected],
            "references": [{"type": "ADVISORY", "url": f"https://example.org/{cve}"}],
        },
    )
    dpkg = (
        b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\n"
        + f"Source: {source}\n\n".encode()
    )
    files = {"etc/os-release": OS_RELEASE, "var/lib/dpkg/status": dpkg}
    repo = f"{name}/app"
    digest = harbor.pusher.push_image(repo, "1.0", files).digest
    api.set_specs({"version": "2", "registry": harbor.registry.url, "repository": f"{name}/*"})
    return Pushed(repo, digest, cve)


def scan_request(harbor: HarborRegistry, pushed: Pushed, **registry: Any) -> dict[str, Any]:
    return {
        "registry": {
            "url": harbor.registry.url,
            "authorization": robot_authorization(),
            **registry,
        },
        "artifact": {
            "repository": pushed.repo,
            "digest": pushed.digest,
            "tag": "1.0",
            "mime_type": DOCKER_MANIFEST,
        },
    }


def report(api: Api, scan_id: str, accept: str = VULN_REPORT, **params: Any) -> requests.Response:
    return api.get(
        f"/harbor/api/v1/scan/{scan_id}/report",
        headers={"Accept": accept},
        params=params,
        allow_redirects=False,
    )


def final_report(api: Api, scan_id: str, **kwargs: Any) -> requests.Response:
    """Poll as Harbor does: 302 (checked against the spec) until 200 or 500."""

    def ready() -> list[requests.Response]:
        r = report(api, scan_id, **kwargs)
        check(r, "/scan/{scan_request_id}/report")
        # In a list: a Response is falsy when its status is an error.
        return [r] if r.status_code != 302 else []

    return wait_for(ready, 60, f"the report of scan {scan_id}")[0]


# -- the tests -------------------------------------------------------------------------------


def test_metadata_names_the_scanner_its_types_and_data_freshness(api: Api):
    r = api.get("/harbor/api/v1/metadata")

    body = check(r, "/metadata")
    assert body["scanner"]["name"] == "regscan"
    [vulnerability, sbom] = body["capabilities"]
    assert VULN_REPORT in vulnerability["produces_mime_types"]
    assert DOCKER_MANIFEST in vulnerability["consumes_mime_types"]
    assert sbom["produces_mime_types"] == [SBOM_REPORT]
    assert body["properties"]["harbor.scanner-adapter/scanner-type"] == "os-package-vulnerability"


def test_an_image_on_harbors_registry_is_scanned_with_the_credentials_harbor_gives(
    api: Api, stack: Stack, harbor: HarborRegistry, pushed: Pushed
):
    # When Harbor asks for a scan, handing over its robot account's credentials
    accepted = api.post("/harbor/api/v1/scan", json=scan_request(harbor, pushed))
    scan_id = check(accepted, "/scan", "post")["id"]
    assert accepted.status_code == 202

    # Then the report, once ready, lists what regscan stored for that digest
    vulnerabilities = check(final_report(api, scan_id), "/scan/{scan_request_id}/report")
    stored = api.results(name=f"{harbor.registry.host}/{pushed.repo}:1.0")
    assert [r["digest"] for r in stored] == [pushed.digest]
    assert [v["cve"] for v in stored[0]["vulnerabilities"]] == [pushed.cve]
    [item] = vulnerabilities["vulnerabilities"]
    assert (item["id"], item["package"], item["fix_version"]) == (
        pushed.cve,
        f"ossl{pushed.repo.split('/')[0]}",
        "3.0.13-1",
    )
    assert item["severity"] == "High" == vulnerabilities["severity"]
    assert item["preferred_cvss"]["vector_v3"] == HIGH
    assert vulnerabilities["artifact"]["digest"] == pushed.digest
    # And the pull went through the registry's token flow, as the robot
    assert harbor.tokens.fetches(f"repository:{pushed.repo}:pull") >= 1
    assert {account for account, _scope in harbor.tokens.issued} == {ROBOT}

    # And the SBOM report of the same scan is the image's CycloneDX document
    sbom = check(
        final_report(api, scan_id, accept=SBOM_REPORT, sbom_media_type=CYCLONEDX),
        "/scan/{scan_request_id}/report",
    )
    assert sbom["media_type"] == CYCLONEDX
    assert [c["name"] for c in sbom["sbom"]["components"]] == ["libssl3"]

    # And the credentials are gone: not in Redis, the database or any log
    redis = Redis.from_url(stack.env["REGSCAN_REDIS_URL"])
    assert redis.exists(f"regscan:pull-auth:{scan_id}") == 0
    leaked = [ROBOT_SECRET, robot_authorization().split()[1]]
    assert not [s for s in leaked if s in database_text(stack)]
    for log in stack.logs.glob("*.log"):
        assert not [s for s in leaked if s in log.read_text(errors="replace")], log


def database_text(stack: Stack) -> str:
    """Every row of every table, as text."""
    engine = make_engine(stack.env["REGSCAN_DATABASE_URL"])
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.connect() as connection:
            return "\n".join(
                repr(row)
                for table in tables.sorted_tables
                for row in connection.execute(select(table))
            )
    finally:
        engine.dispose()


def test_a_scan_the_registry_refuses_ends_in_a_500_report_saying_why(
    api: Api, harbor: HarborRegistry, pushed: Pushed
):
    body = scan_request(harbor, pushed, authorization=robot_authorization("wrong"))
    scan_id = check(api.post("/harbor/api/v1/scan", json=body), "/scan", "post")["id"]

    failed = final_report(api, scan_id)

    assert failed.status_code == 500
    error = check(failed, "/scan/{scan_request_id}/report")["error"]["message"]
    assert "refused" in error or "denied" in error, error


def test_harbor_may_authenticate_with_an_api_key_header(
    api: Api, harbor: HarborRegistry, pushed: Pushed, name: str
):
    # Given an API token for Harbor, sent as X-ScannerAdapter-API-Key
    token = api.post("/api/v1/tokens", json={"name": name, "team": "harbor", "role": "operator"})
    assert token.status_code == 200, token.text
    harbor_client = Api(api.base, auth=None)
    harbor_client.http.headers["X-ScannerAdapter-API-Key"] = token.json()["token"]

    accepted = harbor_client.post("/harbor/api/v1/scan", json=scan_request(harbor, pushed))

    assert accepted.status_code == 202, accepted.text
    assert final_report(harbor_client, check(accepted, "/scan", "post")["id"]).status_code == 200
    # And nobody else gets in
    anonymous = Api(api.base, auth=None).get("/harbor/api/v1/metadata")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        (lambda b: "not json", 400, "malformed JSON"),
        (lambda b: [], 400, "body must be"),
        (lambda b: {"registry": b["registry"]}, 400, "artifact"),
        (lambda b: {**b, "artifact": {**b["artifact"], "digest": "sha256:x"}}, 400, "digest"),
        (lambda b: {**b, "artifact": {**b["artifact"], "repository": "../x"}}, 400, "repository"),
        (
            lambda b: {**b, "registry": {**b["registry"], "authorization": "Basic a\r\nX: y"}},
            400,
            "authorization",
        ),
        (lambda b: {**b, "registry": {**b["registry"], "url": "ftp://x"}}, 400, "url"),
        (
            lambda b: {**b, "artifact": {**b["artifact"], "mime_type": "application/x-helm"}},
            422,
            "mime_type",
        ),
        (
            lambda b: {**b, "registry": {**b["registry"], "url": "http://127.0.0.1:1"}},
            422,
            "outside the registry scope",
        ),
    ],
)
def test_bad_scan_requests_get_a_clear_4xx(
    api: Api, harbor: HarborRegistry, pushed: Pushed, change, status: int, says: str
):
    body = change(scan_request(harbor, pushed))
    data = body if isinstance(body, str) else json.dumps(body)

    r = api.post("/harbor/api/v1/scan", data=data, headers={"Content-Type": "application/json"})

    assert r.status_code == status, r.text
    error = check(r, "/scan", "post")["error"]["message"]
    assert says in error and r.json()["err"] == error


def test_bad_report_requests_get_a_clear_4xx(api: Api, harbor: HarborRegistry, pushed: Pushed):
    accepted = api.post("/harbor/api/v1/scan", json=scan_request(harbor, pushed))
    scan_id = check(accepted, "/scan", "post")["id"]
    path = "/scan/{scan_request_id}/report"

    for unknown in ("999999999", "abc", "1" * 40):
        missing = report(api, unknown)
        assert missing.status_code == 404 and check(missing, path) is None
    wrong_accept = report(api, scan_id, accept="text/html")
    assert (
        wrong_accept.status_code == 400
        and "Accept" in check(wrong_accept, path)["error"]["message"]
    )
    for sbom_type in (None, "application/spdx+json"):
        params = {"sbom_media_type": sbom_type} if sbom_type else {}
        no_type = report(api, scan_id, accept=SBOM_REPORT, **params)
        assert no_type.status_code == 400 and "sbom_media_type" in no_type.json()["err"]
    # A job of the reference API is no Harbor scan request
    final_report(api, scan_id)
    other = api.started(
        {
            "onDemandScan": True,
            "tag": {"registry": harbor.registry.host, "repo": pushed.repo, "tag": "1.0"},
        }
    )
    assert report(api, str(other)).status_code == 404
