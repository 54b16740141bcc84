"""Bulk rescans: a selection of images, and campaigns by query over stored inventories,
each one regular scan under the one-at-a-time rule."""

from __future__ import annotations

import pytest

from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import Api

OS_RELEASE = b'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'


def dpkg(version: str) -> dict[str, bytes]:
    status = (
        f"Package: libssl3\nStatus: install ok installed\nVersion: {version}\nSource: openssl\n"
    )
    return {"etc/os-release": OS_RELEASE, "var/lib/dpkg/status": status.encode()}


def ref(registry: RegistryServer, repo: str, tag: str = "1") -> dict:
    return {"tag": {"registry": registry.host, "repo": repo, "tag": tag, "digest": ""}}


def scan_ids(api: Api, registry: RegistryServer, name: str) -> dict[str, int]:
    results = api.results(registry=registry.host, limit=250)
    mine = [r for r in results if r["repoTag"]["repo"].startswith(f"{name}/")]
    return {r["repoTag"]["repo"].split("/", 1)[1]: r["scanID"] for r in mine}


@pytest.fixture
def swept(api: Api, pusher: Pusher, registry: RegistryServer, name: str) -> str:
    """Three images, swept once: old openssl, fixed openssl, no openssl."""
    pusher.push_image(f"{name}/old", "1", dpkg("3.0.11-1~deb12u2"))
    pusher.push_image(f"{name}/new", "1", dpkg("3.0.14-1~deb12u1"))
    pusher.push_image(f"{name}/none", "1", {"etc/os-release": OS_RELEASE})
    api.set_specs(
        {"version": "2", "registry": f"http://{registry.host}", "repository": f"{name}/*"}
    )
    assert api.wait_job(api.started())["status"] == "completed"
    return name


def test_a_selection_rescans_exactly_the_chosen_images(
    api: Api, registry: RegistryServer, swept: str
):
    before = scan_ids(api, registry, swept)
    r = api.post(
        "/api/v1/registry/scan/select",
        json=[ref(registry, f"{swept}/old"), ref(registry, f"{swept}/none")],
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["kind"] == "regular-select" and job["counts"]["total"] == 2
    done = api.wait_job(job["id"])
    assert done["status"] == "completed" and done["counts"]["scanned"] == 2
    after = scan_ids(api, registry, swept)
    assert after == {**before, "old": job["id"], "none": job["id"]}


def test_a_campaign_by_package_rescans_exactly_the_images_holding_it(
    api: Api, registry: RegistryServer, swept: str
):
    before = scan_ids(api, registry, swept)
    # Every image with openssl (by source name) older than 3.0.13
    r = api.post("/api/v1/registry/scan/campaign", json={"package": "openssl", "fixed": "3.0.13-1"})
    assert r.status_code == 200, r.text
    job = api.wait_job(r.json()["id"])
    assert job["counts"] == {"total": 1, "scanned": 1, "failed": 0, "skipped": 0}
    assert scan_ids(api, registry, swept) == {**before, "old": job["id"]}

    # Every image with libssl3 at all
    every = api.wait_job(
        api.post("/api/v1/registry/scan/campaign", json={"package": "libssl3"}).json()["id"]
    )
    assert every["counts"]["scanned"] == 2


def test_campaigns_obey_the_one_regular_scan_rule_and_check_their_input(
    api: Api, registry: RegistryServer, swept: str
):
    assert api.post("/api/v1/registry/scan/select", json=[]).status_code == 400
    on_demand = {**ref(registry, f"{swept}/old"), "onDemandScan": True}
    r = api.post("/api/v1/registry/scan/select", json=[on_demand])
    assert r.status_code == 400 and "drop onDemandScan" in r.json()["err"]
    both = {"package": "openssl", "vulnerability": "CVE-2024-1"}
    assert api.post("/api/v1/registry/scan/campaign", json=both).status_code == 400
    outside = api.post("/api/v1/registry/scan/select", json=[ref(registry, "elsewhere/app")])
    assert outside.status_code == 403
    nothing = api.post("/api/v1/registry/scan/campaign", json={"package": "no-such-package"})
    assert nothing.status_code == 400 and "names no image in scope" in nothing.json()["err"]
