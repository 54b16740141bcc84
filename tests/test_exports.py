"""Fleet queries and exports answered from stored data: which images hold a package,
a CSV of results, a CycloneDX document per image."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import Api, Stack
from tests.test_vulns import import_cli


def dist_info(name: str, version: str) -> dict[str, bytes]:
    base = f"usr/lib/python3/dist-packages/{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    return {f"{base}/METADATA": meta.encode()}


OS_RELEASE = b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"


def dpkg(source: str) -> bytes:
    return (
        b"Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\n"
        + f"Source: {source}\n\n".encode()
        + b"Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\n"
        b"Source: zlib (1:1.2.13.dfsg-1)\n"
    )


def import_record(stack: Stack, folder: Path, record: dict) -> None:
    path = folder / f"{record['id']}.json"
    path.write_text(json.dumps(record))
    done = import_cli(stack, path)
    assert done.returncode == 0, done.stderr


@dataclass
class Fleet:
    name: str
    source: str  # the openssl-like source package of images a and b, unique to the test
    cve: str


@pytest.fixture
def fleet(
    api: Api, stack: Stack, pusher: Pusher, registry: RegistryServer, name: str, tmp_path: Path
) -> Fleet:
    """Three scanned images: a and b hold libssl3 (affected by ``cve``), a also
    requests 2.31.0, b requests 2.28.0; c holds neither."""
    source, cve = f"ossl{name}", f"CVE-2099-{int(name[1:], 16) % 10**7:07d}"
    affected = {
        "package": {"ecosystem": "Debian:12", "name": source},
        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.13-1"}]}],
    }
    record = {
        "id": cve,
        "modified": "2026-01-01T00:00:00Z",
        "published": "2026-01-01T00:00:00Z",
        "severity": [{"type": "CVSS_V3", "score": HIGH}],
        "affected": [affected],
    }
    import_record(stack, tmp_path, record)
    base = {"etc/os-release": OS_RELEASE, "var/lib/dpkg/status": dpkg(source)}
    pusher.push_image(f"{name}/a", "1", {**base, **dist_info("requests", "2.31.0")})
    pusher.push_image(f"{name}/b", "1", {**base, **dist_info("requests", "2.28.0")})
    pusher.push_image(f"{name}/c", "1", dist_info("flask", "3.0.0"))
    api.set_specs(
        {"version": "2", "registry": f"http://{registry.host}", "repository": f"{name}/*"}
    )
    assert api.wait_job(api.started())["status"] == "completed"
    return Fleet(name, source, cve)


def repos(results: list[dict]) -> list[str]:
    return sorted(r["repoTag"]["repo"].rsplit("/", 1)[-1] for r in results)


def mine(results: list[dict], fleet: Fleet) -> list[str]:
    return repos([r for r in results if r["repoTag"]["repo"].startswith(f"{fleet.name}/")])


def test_which_images_hold_a_package_or_have_a_vulnerability(
    api: Api, registry: RegistryServer, fleet: Fleet
):
    by_binary = api.results(package="libssl3", registry=registry.host, limit=250)
    by_source = api.results(package=fleet.source, registry=registry.host)
    exact = api.results(package="requests", packageVersion="2.31.0", registry=registry.host)
    assert mine(by_binary, fleet) == ["a", "b"]
    assert mine(by_source, fleet) == ["a", "b"]
    assert mine(exact, fleet) == ["a"]
    assert mine(api.results(cve=fleet.cve), fleet) == ["a", "b"]
    assert mine(api.results(cve=fleet.cve.lower()), fleet) == ["a", "b"]
    r = api.get("/api/v1/registry", params={"packageVersion": "1"})
    assert r.status_code == 400 and "needs package" in r.json()["err"]


def test_csv_download_has_a_row_per_image_and_finding(
    api: Api, registry: RegistryServer, fleet: Fleet
):
    name = f"{registry.host}/{fleet.name}/a:1"
    r = api.get("/api/v1/registry/download", params={"name": name})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    cells = [(row["Repository"], row["Tag"], row["CVE"], row["Severity"]) for row in rows]
    assert cells == [(f"{fleet.name}/a", "1", fleet.cve, "high")]
    assert rows[0]["Package"] == fleet.source and rows[0]["Status"] == "fixed in 3.0.13-1"
    assert rows[0]["Id"].startswith("sha256:") and rows[0]["Platform"] == "linux/amd64"
    clean = api.get("/api/v1/registry/download", params={"repository": f"{fleet.name}/c"}).text
    assert [row["CVE"] for row in csv.DictReader(io.StringIO(clean))] == [""]


def test_cyclonedx_document_of_an_image_is_valid_and_complete(
    api: Api, registry: RegistryServer, fleet: Fleet
):
    name = f"{registry.host}/{fleet.name}/a:1"
    r = api.get("/api/v1/registry/cyclonedx", params={"name": name})
    assert r.status_code == 200, r.text
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(r.text) is None
    doc = json.loads(r.text)
    assert doc["metadata"]["component"]["type"] == "container"
    purls = sorted(c["purl"] for c in doc["components"])
    assert purls == [
        "pkg:deb/debian/libssl3@3.0.11-1~deb12u2",
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1",
        "pkg:pypi/requests@2.31.0",
    ]
    [vuln] = doc["vulnerabilities"]
    libssl = next(c for c in doc["components"] if c["name"] == "libssl3")
    assert vuln["id"] == fleet.cve and vuln["affects"] == [{"ref": libssl["bom-ref"]}]
    assert vuln["ratings"][0]["severity"] == "high"
    missing = api.get("/api/v1/registry/cyclonedx", params={"name": f"{registry.host}/none:1"})
    assert missing.status_code == 404


def test_a_package_name_no_package_url_can_hold_still_exports(
    api: Api, pusher: Pusher, registry: RegistryServer, name: str
):
    # Given an image whose files name a package "@evil/" (a scope and no name)
    odd = json.dumps({"name": "@evil/", "version": "1.0.0"}).encode()
    fine = json.dumps({"name": "left-pad", "version": "1.3.0"}).encode()
    pusher.push_image(
        f"{name}/odd",
        "1",
        {
            "app/node_modules/odd/package.json": odd,
            "app/node_modules/left-pad/package.json": fine,
        },
    )
    api.set_specs(
        {"version": "2", "registry": f"http://{registry.host}", "repository": f"{name}/*"}
    )
    assert api.wait_job(api.started())["status"] == "completed"

    # When its CycloneDX document is asked for
    r = api.get("/api/v1/registry/cyclonedx", params={"name": f"{registry.host}/{name}/odd:1"})

    # Then it is a valid document listing both, the odd one without a package URL
    assert r.status_code == 200, r.text
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(r.text) is None
    components = {c["name"]: c.get("purl") for c in json.loads(r.text)["components"]}
    assert components == {"@evil/": None, "left-pad": "pkg:npm/left-pad@1.3.0"}
