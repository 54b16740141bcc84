"""regscan driven by the Prisma Cloud SDK itself (``prismacloud-api``) and its CLI
(``pc``), unchanged, over regscan's own HTTPS, as a user of Prisma Cloud Compute would.

Every registry-related function of the SDK is called: settings read and write, scans
(all, one image, on demand, a selection), results (paged, by id), image names, the scan
status, the CSV download, and the credentials store with usages; and ``pc registry
list``. The SDK builds every URL as ``https://`` and checks the certificate against
the CA file it is given; the certificate is the test run's (``api_certificate``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prismacloud.api.pc_lib_api import PrismaCloudAPI

from testbed.images import Pusher
from testbed.services import RegistryServer
from testbed.stack import ADMIN, Api, Stack, wait_for
from testbed.tls import ServerCertificate


@pytest.fixture
def sdk(
    stack: Stack, api: Api, api_certificate: ServerCertificate, tmp_path: Path, monkeypatch
) -> Iterator[PrismaCloudAPI]:
    """The SDK logged in to regscan's HTTPS listener as the admin."""
    # The SDK writes error.log into the working directory.
    monkeypatch.chdir(tmp_path)
    wait_for(lambda: _answers(stack, api_certificate), 30, "the API's HTTPS listener")
    pc = PrismaCloudAPI()
    pc.configure(
        {
            "url": stack.https_base,
            "identity": ADMIN[0],
            "secret": ADMIN[1],
            "verify": str(api_certificate.ca_file),
        }
    )
    yield pc


def _answers(stack: Stack, cert: ServerCertificate) -> bool:
    try:
        ping = requests.get(f"{stack.https_base}/api/v1/_ping", verify=cert.ca_file, timeout=2)
    except requests.ConnectionError:
        return False
    return ping.status_code == 200


def spec(registry: RegistryServer, repository: str, **extra: Any) -> dict[str, Any]:
    host = f"http://{registry.host}"
    return {"version": "2", "registry": host, "repository": repository, **extra}


def configure(sdk: PrismaCloudAPI, api: Api, *specs: dict[str, Any]) -> None:
    """Write the configuration through the SDK; saving starts a sweep: let it end."""
    answer = sdk.settings_registry_write({"specifications": list(specs)})
    if answer.get("scan"):
        api.wait_job(answer["scan"]["id"])


def push_small(pusher: Pusher, repo: str, tag: str) -> str:
    return pusher.push_image(repo, tag, {f"{tag}.txt": f"{repo}:{tag}".encode()}).digest


def mine(results: list[dict[str, Any]], name: str) -> list[tuple[str, str]]:
    return sorted(
        (r["repoTag"]["repo"], r["repoTag"]["tag"])
        for r in results
        if r["repoTag"]["repo"].startswith(f"{name}/")
    )


def test_sdk_reads_changes_and_writes_the_registry_settings(
    sdk: PrismaCloudAPI, api: Api, registry: RegistryServer, name: str
):
    # Given a configuration written through the SDK
    configure(sdk, api, spec(registry, f"{name}/a"))

    # When a script reads it, appends a Prisma-shaped specification and writes it back
    document = sdk.settings_registry_read()
    document["specifications"].append(
        spec(registry, f"{name}/b", namespace=name, versionPattern="*", collections=[])
    )
    answer = sdk.settings_registry_write(document)
    api.wait_job(answer["scan"]["id"])

    # Then both are configured, the Prisma fields kept
    saved = sdk.settings_registry_read()["specifications"]
    assert [s["repository"] for s in saved] == [f"{name}/a", f"{name}/b"]
    assert saved[1]["namespace"] == name and saved[1]["versionPattern"] == "*"


def test_sdk_scans_and_reads_results_names_status_and_the_csv(
    sdk: PrismaCloudAPI, api: Api, registry: RegistryServer, pusher: Pusher, name: str
):
    # Given two images in scope
    digests = {repo: push_small(pusher, f"{name}/{repo}", "1") for repo in ("alpine", "nginx")}
    configure(sdk, api, spec(registry, f"{name}/*"))

    # When everything in scope is scanned through the SDK
    job = sdk.registry_scan()
    assert api.wait_job(job["id"])["status"] == "completed"

    # Then the paged result list, a result by id and the names show both
    everything = sdk.registry_list_read()
    assert mine(everything, name) == [(f"{name}/alpine", "1"), (f"{name}/nginx", "1")]
    [alpine] = sdk.registry_list_read(digests["alpine"])
    assert alpine["repoTag"]["repo"] == f"{name}/alpine"
    names = sdk.registry_list_image_names({"search": name})
    assert names == [f"{registry.host}/{name}/alpine:1", f"{registry.host}/{name}/nginx:1"]
    # And the status of the sweep
    status = sdk.statuses_registry()
    assert status["completed"] is True and status["scanID"] == job["id"]
    # And the CSV download, which the SDK hands back as text only for text/csv
    text = sdk.execute_compute("GET", "api/v1/registry/download?", query_params={"search": name})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["Repository"] for row in rows) == [f"{name}/alpine", f"{name}/nginx"]


def test_sdk_scans_one_image_on_demand_and_a_selection(
    sdk: PrismaCloudAPI, api: Api, registry: RegistryServer, pusher: Pusher, name: str
):
    for tag in ("1", "2"):
        push_small(pusher, f"{name}/app", tag)
    configure(sdk, api, spec(registry, f"{name}/*"))
    ref = {"registry": registry.host, "repo": f"{name}/app", "tag": "1", "digest": ""}

    one = sdk.registry_scan({"tag": ref})
    assert (one["kind"], api.wait_job(one["id"])["status"]) == ("regular-image", "completed")
    on_demand = sdk.registry_scan({"onDemandScan": True, "tag": ref})
    assert (on_demand["kind"], api.wait_job(on_demand["id"])["status"]) == (
        "on-demand",
        "completed",
    )
    selected = sdk.registry_scan_select([{"tag": ref}, {"tag": {**ref, "tag": "2"}}])
    assert api.wait_job(selected["id"])["counts"]["scanned"] == 2


def test_sdk_manages_credentials_and_their_usages(
    sdk: PrismaCloudAPI, api: Api, registry: RegistryServer, name: str
):
    cid = f"{name}-robot"
    body = {
        "_id": cid,
        "type": "basic",
        "accountID": "robot",
        "secret": {"encrypted": "", "plain": "s3cret"},
        "skipVerify": False,
        "useAWSRole": False,
        "accountName": "",
        "useSTSRegionalEndpoint": False,
        "caCert": "",
        "apiToken": {"encrypted": "", "plain": ""},
    }
    sdk.credential_list_create(body)
    assert cid in [c["_id"] for c in sdk.credential_list_read()]
    configure(sdk, api, spec(registry, f"{name}/a", credentialID=cid))

    [usage] = sdk.credential_list_usages_read(cid)
    assert f"{name}/a" in usage["description"]

    configure(sdk, api, spec(registry, f"{name}/a"))
    assert sdk.credential_list_usages_read(cid) == []
    sdk.credential_list_delete(cid)
    assert cid not in [c["_id"] for c in sdk.credential_list_read()]


def test_pc_registry_list(
    sdk: PrismaCloudAPI,
    api: Api,
    stack: Stack,
    api_certificate: ServerCertificate,
    registry: RegistryServer,
    name: str,
    tmp_path: Path,
):
    # Given a configuration, and the CLI configured from the environment
    configure(sdk, api, spec(registry, f"{name}/*", tag="1*"))
    home = tmp_path / "home"
    (home / ".prismacloud").mkdir(parents=True)
    # The CLI asks once, interactively, to acknowledge its support policy.
    (home / ".prismacloud" / ".community_supported_accepted").write_text("Yes")
    env = {
        **os.environ,
        "HOME": str(home),
        "PC_URL": stack.https_base,
        "PC_IDENTITY": ADMIN[0],
        "PC_SECRET": ADMIN[1],
        "PC_VERIFY": str(api_certificate.ca_file),
    }
    pc = Path(sys.executable).parent / "pc"

    # When `pc registry list` runs
    done = subprocess.run(
        [str(pc), "--config", "env", "-o", "json", "registry", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )

    # Then it lists the configured registry, repository and tag
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assert listed == [{"registry": f"http://{registry.host}", "repo": f"{name}/*", "tag": "1*"}]
