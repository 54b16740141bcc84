"""Vulnerability data out of the box: a standalone with no sources configured fetches the
OSV exports of the ecosystems its images hold, from a local server standing in for the
public one, and reports findings; when that server goes away it says so (GET /vulndb,
the CLI, the dashboard) and keeps the findings it has.

The choice of exports is checked in process first.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.images import Pusher
from testbed.osv_export import OsvExports
from testbed.services import RegistryServer, free_port, stop_process
from testbed.stack import Api, wait_for
from tests.test_inventory import ALPINE_OS_RELEASE, dist_info
from worker.vuln_import import export_names

PASSWORD = "standalone-admin-password"


def test_the_exports_are_those_of_the_ecosystems_the_images_hold():
    releases = [
        ("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
        ("ubuntu", "22.04", "Ubuntu 22.04.4 LTS"),
        ("rocky", "9.3", "Rocky Linux 9.3"),
        ("rhel", "9.3", "Red Hat Enterprise Linux 9.3"),  # no OS ecosystem in OSV
    ]
    assert export_names(releases, {"package", "python", "jar"}) == {
        "Debian",
        "Ubuntu",
        "Rocky Linux",
        "PyPI",
        "Maven",
    }
    # No OS package stored: no OS export is needed
    assert export_names(releases, {"nodejs", "go"}) == {"npm", "Go"}


# -- a standalone, end to end ------------------------------------------------------------


class Standalone:
    """``regscan standalone`` in a folder of its own, with only the settings given."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = workdir / "standalone.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("REGSCAN_")}
        self.env = {**clean, "PYTHONPATH": str(Path.cwd()), **env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regscan.cli", "standalone", "--port", str(self.port)],
                cwd=workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.api = Api(f"http://127.0.0.1:{self.port}", auth=("admin", PASSWORD))
        wait_for(self._answers, 90, "the standalone's API")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return self.api.get("/healthz", timeout=1).ok
        except requests.ConnectionError:
            return False

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "REGSCAN_URL": self.api.base, "REGSCAN_USER": "admin"}
        return subprocess.run(
            [sys.executable, "-m", "regscan.cli", *args],
            env={**env, "REGSCAN_PASSWORD": PASSWORD},
            capture_output=True,
            text=True,
            timeout=60,
        )


def osv(rid: str, ecosystem: str, package: str, fixed: str) -> dict[str, Any]:
    return {
        "id": rid,
        "modified": "2026-01-01T00:00:00Z",
        "summary": f"{package} is vulnerable",
        "affected": [
            {
                "package": {"ecosystem": ecosystem, "name": package},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
            }
        ],
    }


@pytest.fixture
def exports() -> Iterator[OsvExports]:
    served = OsvExports(
        {
            "Alpine": [osv("CVE-2099-0001", "Alpine:v3.19", "musl", "1.2.4-r3")],
            "PyPI": [osv("GHSA-aaaa-bbbb-cccc", "PyPI", "requests", "2.32.0")],
            "Debian": [osv("CVE-2099-0002", "Debian:12", "openssl", "3.0.99")],
        }
    )
    yield served
    served.close()


@pytest.fixture
def standalone(tmp_path: Path, exports: OsvExports) -> Iterator[Standalone]:
    started = Standalone(
        tmp_path,
        {
            "REGSCAN_ADMIN_PASSWORD": PASSWORD,
            "REGSCAN_VULNDB_OSV_URL": exports.url,
            # Passes every second, a refresh period and retries of seconds: a test's pace.
            "REGSCAN_REAPER_SECONDS": "1",
            "REGSCAN_VULNDB_REFRESH_SECONDS": "3",
            "REGSCAN_VULNDB_RETRY_SECONDS": "2",
        },
    )
    yield started
    stop_process(started.proc, timeout=30)


@pytest.mark.e2e
def test_a_standalone_with_no_sources_fetches_the_exports_its_images_need(
    standalone: Standalone, exports: OsvExports, registry: RegistryServer, name: str
):
    api = standalone.api
    # Given an Alpine image holding musl and the Python package requests
    files = {
        "etc/os-release": ALPINE_OS_RELEASE,
        "lib/apk/db/installed": b"P:musl\nV:1.2.4-r2\no:musl\n\n",
        **dist_info("requests", "2.31.0"),
    }
    repo = f"{name}/alpine"
    Pusher(registry.url).push_image(repo, "3.19", files)
    api.set_specs({"version": "2", "registry": f"http://{registry.host}", "repository": repo})
    assert api.get("/api/v1/vulndb").json()["status"] == "empty"

    # When it is scanned, with no vulnerability data source configured
    tag = {"registry": registry.host, "repo": repo, "tag": "3.19"}
    assert api.wait_job(api.started({"onDemandScan": True, "tag": tag}))["status"] == "completed"

    # Then the exports of its two ecosystems are fetched (and no other), and its findings
    # follow
    def found() -> set[str]:
        [result] = api.results(name=f"{registry.host}/{repo}:3.19")
        return {v["cve"] for v in result["vulnerabilities"]}

    wait_for(lambda: found() == {"CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"}, 90, "the findings")
    assert exports.asked_for() == {"Alpine", "PyPI"}
    status = api.get("/api/v1/vulndb").json()
    assert (status["mode"], status["status"]) == ("default", "ok"), status
    assert status["osvBaseUrl"] == exports.url
    assert sorted(s["location"] for s in status["sources"]) == [
        f"{exports.url}/Alpine/all.zip",
        f"{exports.url}/PyPI/all.zip",
    ]
    assert all(s["status"] == "ok" and s["etag"] for s in status["sources"])
    # The refreshes after the first download nothing: the ETag is honoured
    wait_for(lambda: any(code == 304 for _p, code in exports.requests), 30, "a refresh")

    # When the public server can no longer be reached
    exports.close()

    # Then GET /vulndb says the sources are failing, and the findings stay
    def failing() -> dict[str, Any] | None:
        now = api.get("/api/v1/vulndb").json()
        every = {s["status"] for s in now["sources"]} == {"failing"}
        return now if now["status"] == "failing" and every else None

    status = wait_for(failing, 60, "both sources to be reported failing")
    assert "2 of 2 vulnerability data sources failing" in status["message"]
    assert "cannot be reached" in status["message"]
    assert "matching goes on with the 2 records already stored" in status["message"]
    assert found() == {"CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"}

    # And the command line says so too, in one line per source, without a traceback
    done = standalone.cli("status")
    assert done.returncode == 0, done.stderr
    assert "vulnerability data: failing (default)" in done.stdout
    assert len(re.findall(r"failing .*/(Alpine|PyPI)/all\.zip", done.stdout)) == 2
    results = standalone.cli("results", f"{registry.host}/{repo}:3.19", "--format", "json")
    [shown] = json.loads(results.stdout)
    assert {v["cve"] for v in shown["vulnerabilities"]} == {"CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"}

    # And so does the dashboard's overview
    page = dashboard_overview(api.base)
    assert "vulnerability data sources failing" in page
    assert f"{exports.url}/Alpine/all.zip" in page


def dashboard_overview(base: str) -> str:
    """The overview page's HTML, logged in through the login form."""
    http = requests.Session()
    form = http.get(f"{base}/ui/login", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    body = {"csrf": csrf.group(1), "next": "/", "username": "admin", "password": PASSWORD}
    r = http.post(f"{base}/ui/login", data=body, timeout=10)
    assert r.status_code == 200 and "Overview" in r.text, r.text
    return r.text
