"""What scripts written against Prisma Cloud Compute send and read, over plain HTTP: the
settings written back as read, the Prisma fields of specifications and credentials
(stored, returned, and applied where regscan has the feature), the CSV's media type,
image names, credential usages, result search, and a sweep whose discovery failed.

The same calls made through the Prisma Cloud SDK itself, over TLS, are in test_sdk.py.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed.images import Pusher
from testbed.services import RegistryServer, free_port
from testbed.stack import Api
from testbed.tls import TestCA

PRISMA_SPEC_FIELDS = {
    "harborDeploymentSecurity": True,
    "collections": [{"name": "All", "owner": "system"}],
    "gitlabRegistrySpec": {"groupIDs": ["42"], "userID": "7"},
}


def spec(registry: RegistryServer | str, repository: str, **extra: Any) -> dict[str, Any]:
    host = registry if isinstance(registry, str) else f"http://{registry.host}"
    return {"version": "2", "registry": host, "repository": repository, **extra}


def push_small(pusher: Pusher, repo: str, tag: str) -> str:
    return pusher.push_image(repo, tag, {f"{tag}.txt": f"{repo}:{tag}".encode()}).digest


def on_demand(registry: RegistryServer, repo: str, tag: str) -> dict[str, Any]:
    return {"onDemandScan": True, "tag": {"registry": registry.host, "repo": repo, "tag": tag}}


def credential(cid: str, **extra: Any) -> dict[str, Any]:
    body = {"_id": cid, "type": "basic", "accountID": "robot", "secret": {"plain": "pw"}}
    return {**body, **extra}


# -- 1. settings read, changed and written back ---------------------------------------


def test_settings_read_back_are_accepted_on_put_and_post(
    api: Api, registry: RegistryServer, name: str
):
    # Given the configuration as GET shows it, read-only fields included
    api.set_specs(spec(registry, f"{name}/a"))
    document = api.get("/api/v1/settings/registry").json()
    assert {"webhookUrlSuffix", "specifications"} <= set(document)

    # When a script appends a specification and PUTs the document back
    document["specifications"].append(spec(registry, f"{name}/b"))
    put = api.put("/api/v1/settings/registry?scanLater=true", json=document)

    # Then it is saved, and the read-only fields are ignored
    assert put.status_code == 200, put.text
    again = api.get("/api/v1/settings/registry").json()
    assert [s["repository"] for s in again["specifications"]] == [f"{name}/a", f"{name}/b"]
    # And POST takes the whole document too, appending its specifications
    document["specifications"] = [spec(registry, f"{name}/c")]
    post = api.post("/api/v1/settings/registry?scanLater=true", json=document)
    assert post.status_code == 200, post.text
    assert [s["repository"] for s in post.json()["specifications"]][-1] == f"{name}/c"


# -- 2. Prisma fields ---------------------------------------------------------------


def test_prisma_specification_fields_are_stored_returned_and_unknown_ones_refused(
    api: Api, registry: RegistryServer, name: str
):
    # Given a specification with every Prisma field regscan knows
    sent = spec(registry, f"{name}/*", namespace=f"{name}/ns", versionPattern="1.*")
    sent.update(PRISMA_SPEC_FIELDS)
    r = api.put("/api/v1/settings/registry?scanLater=true", json={"specifications": [sent]})

    # Then it is saved and returned as sent
    assert r.status_code == 200, r.text
    [saved] = api.get("/api/v1/settings/registry").json()["specifications"]
    assert {k: saved[k] for k in sent} == sent
    # And a field nobody knows is still refused, by name
    bogus = api.put("/api/v1/settings/registry", json={"specifications": [{**sent, "bogus": 1}]})
    assert bogus.status_code == 400
    assert bogus.json()["err"].startswith("specifications.0.bogus: unknown field")
    # And a Prisma field of the wrong type is refused clearly
    wrong = api.put(
        "/api/v1/settings/registry", json={"specifications": [{**sent, "collections": 5}]}
    )
    assert wrong.status_code == 400 and "collections" in wrong.json()["err"]


def test_namespace_and_version_pattern_narrow_the_scope(
    api: Api, registry: RegistryServer, pusher: Pusher, name: str
):
    # Given images inside and outside a namespace, with versions inside and outside a pattern
    for repo, tag in [("ns/app", "1.0"), ("ns/app", "2.0"), ("other/app", "1.0")]:
        push_small(pusher, f"{name}/{repo}", tag)
    api.set_specs(spec(registry, f"{name}/*", namespace=f"{name}/ns", versionPattern="1.*"))

    # When everything in scope is scanned
    job = api.wait_job(api.started())

    # Then only the namespace's images matching the pattern were scanned
    assert job["status"] == "completed", job
    scanned = {
        (r["repoTag"]["repo"], r["repoTag"]["tag"])
        for r in api.results(registry=registry.host, search=name)
    }
    assert scanned == {(f"{name}/ns/app", "1.0")}
    # And on-demand scans outside them are refused as out of scope
    for repo, tag in [("other/app", "1.0"), ("ns/app", "2.0")]:
        r = api.scan(on_demand(registry, f"{name}/{repo}", tag))
        assert r.status_code == 403, r.text


def test_prisma_credential_fields_are_stored_and_returned_and_the_token_never(
    api: Api, name: str, tmp_path: Path
):
    # Given a credential with the Prisma fields, posted as the SDK posts it
    ca = TestCA(tmp_path).pem.decode()
    token = f"api-token-{name}"
    body = credential(
        f"{name}-cred",
        caCert=ca,
        skipVerify=False,
        apiToken={"encrypted": "", "plain": token},
        useAWSRole=True,
        accountName="prod",
        useSTSRegionalEndpoint=True,
    )
    r = api.post("/api/v1/credentials?project=Central+Console", json=body)

    # Then it is stored, and returned with those fields but never the token or secret
    assert r.status_code == 200, r.text
    listed = {c["_id"]: c for c in api.get("/api/v1/credentials").json()}[f"{name}-cred"]
    assert listed["caCert"] == ca and listed["skipVerify"] is False
    assert (listed["useAWSRole"], listed["accountName"], listed["useSTSRegionalEndpoint"]) == (
        True,
        "prod",
        True,
    )
    assert token not in r.text and "apiToken" not in listed
    # And a credential read back is accepted again (lastModified is read-only)
    again = api.post("/api/v1/credentials", json={**listed, "secret": {"plain": "pw"}})
    assert again.status_code == 200, again.text
    # And what cannot be right is refused clearly
    for bad, what in [
        ({"caCert": "not a certificate"}, "caCert"),
        ({"skipVerify": "yes"}, "skipVerify"),
        ({"bogus": True}, "bogus: unknown field"),
    ]:
        refused = api.post("/api/v1/credentials", json=credential(f"{name}-bad", **bad))
        assert refused.status_code == 400 and what in refused.json()["err"], refused.text


@dataclass
class TlsRegistry:
    """A registry serving HTTPS with a certificate a test CA signed, and a pusher to it
    (through a plain registry on the same storage)."""

    server: RegistryServer
    ca: TestCA
    pusher: Pusher


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    ca = TestCA(tmp_path_factory.mktemp("registry-tls"))
    cert = ca.issue("registry")
    storage = tmp_path_factory.mktemp("tls-storage")
    with (
        RegistryServer(storage_dir=storage, tls=(cert.cert_file, cert.key_file)) as server,
        RegistryServer(storage_dir=storage) as plain,
    ):
        yield TlsRegistry(server, ca, Pusher(plain.url))


def test_ca_cert_and_skip_verify_set_tls_to_the_registry(
    api: Api, tls_registry: TlsRegistry, name: str
):
    # Given an image per credential on a registry whose certificate a private CA signed,
    # and credentials that trust that CA, skip the check, or do neither
    creds = {"trusted": {"caCert": tls_registry.ca.pem.decode()}, "skipped": {"skipVerify": True}}
    creds["default"] = {}
    host = tls_registry.server.host
    for cid, extra in creds.items():
        push_small(tls_registry.pusher, f"{name}/{cid}", "1")
        r = api.post("/api/v1/credentials", json=credential(f"{name}-{cid}", **extra))
        assert r.status_code == 200, r.text
    api.set_specs(*[spec(host, f"{name}/{cid}", credentialID=f"{name}-{cid}") for cid in creds])

    # When each is scanned on demand
    def scan(cid: str) -> dict[str, Any]:
        body = {
            "onDemandScan": True,
            "tag": {"registry": host, "repo": f"{name}/{cid}", "tag": "1"},
        }
        return api.wait_job(api.started(body))

    # Then the CA certificate and skipVerify let the scan through
    assert scan("trusted")["status"] == "completed"
    assert scan("skipped")["status"] == "completed"
    # And without either the registry's certificate is refused
    failed = scan("default")
    assert failed["status"] == "failed" and "certificate" in failed["error"].lower(), failed


# -- 3. the CSV's media type ---------------------------------------------------------


def test_csv_download_is_text_csv_exactly(api: Api, name: str):
    r = api.get("/api/v1/registry/download", params={"search": name})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv"
    assert next(csv.reader(io.StringIO(r.text)))[0] == "Registry"


# -- 4. missing endpoints; 5. search, compact, fields --------------------------------


@pytest.fixture
def scanned(api: Api, registry: RegistryServer, pusher: Pusher, name: str) -> str:
    """alpine-like and busybox-like images of this test, scanned."""
    for repo in ("alpine", "busybox"):
        push_small(pusher, f"{name}/{repo}", "1")
    api.set_specs(spec(registry, f"{name}/*"))
    assert api.wait_job(api.started())["status"] == "completed"
    return name


def test_image_names_are_listed_as_strings(api: Api, registry: RegistryServer, scanned: str):
    r = api.get("/api/v1/registry/names", params={"search": scanned})
    assert r.status_code == 200, r.text
    assert r.json() == [
        f"{registry.host}/{scanned}/alpine:1",
        f"{registry.host}/{scanned}/busybox:1",
    ]
    paged = api.get("/api/v1/registry/names", params={"search": scanned, "offset": 1, "limit": 1})
    assert paged.json() == [f"{registry.host}/{scanned}/busybox:1"]


def test_credential_usages_name_the_specifications_using_it(
    api: Api, registry: RegistryServer, name: str
):
    cid = f"{name}-used"
    assert api.post("/api/v1/credentials", json=credential(cid)).status_code == 200
    api.set_specs(spec(registry, f"{name}/a", credentialID=cid), spec(registry, f"{name}/b"))

    r = api.get(f"/api/v1/credentials/{cid}/usages")

    assert r.status_code == 200, r.text
    [usage] = r.json()
    assert usage["type"] == "registry" and f"{name}/a" in usage["description"]
    assert api.get(f"/api/v1/credentials/{name}-none/usages").status_code == 404


def test_search_compact_and_fields_shape_the_results(api: Api, scanned: str):
    # search: a substring of registry, repository or tag, in any case
    found = api.results(search=f"{scanned}/ALP")
    assert [r["repoTag"]["repo"] for r in found] == [f"{scanned}/alpine"]
    assert api.results(search=f"{scanned}/none") == []
    # compact: without the long lists; the counts stay
    [compact] = api.results(search=f"{scanned}/alpine", compact="true")
    assert "packages" not in compact and "vulnerabilities" not in compact
    assert "vulnerabilitiesCount" in compact
    # fields: only those asked for
    [picked] = api.results(search=f"{scanned}/alpine", fields="repoTag,scanTime")
    assert set(picked) == {"repoTag", "scanTime"}


# -- 6. a sweep whose discovery failed -------------------------------------------------


def test_registry_status_shows_a_failed_discovery_and_why(api: Api):
    # Given a specification whose registry cannot be reached
    unreachable = f"127.0.0.1:{free_port()}"
    api.set_specs(spec(f"http://{unreachable}", "*"))

    # When everything in scope is scanned
    api.wait_job(api.started())
    status = api.get("/api/v1/statuses/registry").json()

    # Then the status says discovery failed there, and why
    assert status["discoveryFailed"] == 1, status
    [error] = status["errors"]
    assert error["registry"] == unreachable and error["status"] == "discovery-failed"
    assert "cannot connect" in error["err"] or "unavailable" in error["err"]
