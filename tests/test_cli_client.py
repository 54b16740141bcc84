"""The ``regscan`` command as another team's pipeline uses it, against the running stack:
login, scan with live progress (in a real terminal, a pty) and plain lines (in a pipe),
CI gating with ``--exit-code``, results in every format, and every failure one line.

The pieces that need no server (image names, severities, the progress line) are checked
in process first.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from regscan.client import commands, follow, render
from regscan.client.api import ClientError, base_url
from testbed.images import Pusher
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer, free_port
from testbed.stack import ADMIN, Api, Stack
from tests.test_inventory import dist_info
from tests.test_vulns import HIGH_V3, Ids, cvss, hit, import_cli, osv_record, write_records

# The CLI is a client of the HTTP API: what it shows does not depend on the database.
pytestmark = pytest.mark.sqlite_only

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# -- no server needed ---------------------------------------------------------------------------


def test_image_names_severities_and_urls():
    assert commands.parse_image("r.example:5000/team/app:1.0@sha256:" + "a" * 64) == {
        "registry": "r.example:5000",
        "repo": "team/app",
        "tag": "1.0",
        "digest": "sha256:" + "a" * 64,
    }
    assert commands.parse_image("r.example/app")["tag"] == ""
    with pytest.raises(ClientError, match="not a full image name"):
        commands.parse_image("app:1.0")
    assert render.parse_severity("HIGH,CRITICAL") == "high"
    assert render.parse_severity("medium") == "medium"
    with pytest.raises(ClientError, match="unknown severity"):
        render.parse_severity("severe")
    assert render.at_least({"severity": "critical"}, "high")
    assert not render.at_least({"severity": ""}, "low")
    assert render.at_least({"severity": ""}, "unknown")
    assert base_url("regscan:8080/api/v1/") == "http://regscan:8080"


def test_the_progress_line_says_counts_rate_and_time_left():
    job = {
        "id": 7,
        "kind": "regular-all",
        "status": "running",
        "discoveredAt": "2026-01-01T00:00:00Z",
        "counts": {"total": 100, "scanned": 38, "failed": 2, "skipped": 0},
    }
    rate = follow.Rate()
    rate.add(0.0, 20)
    rate.add(10.0, 40)
    line = follow.describe(follow.Snapshot.of(job), rate)
    assert line == "scan 7 running: 40/100 images, 2 failed, 2.0 images/s, ETA 0:30"
    discovering = {**job, "discoveredAt": None, "counts": {**job["counts"], "total": 12}}
    assert "discovering images in every image in scope, 12 found" in follow.describe(
        follow.Snapshot.of(discovering)
    )


# -- against the running stack -------------------------------------------------------------------


def spec(registry: str, repository: str = "", **extra: Any) -> dict[str, Any]:
    return {"version": "2", "registry": registry, "repository": repository, **extra}


class Cli:
    """``regscan`` run as a user runs it, with a config folder of its own."""

    def __init__(self, stack: Stack, home: Path) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("REGSCAN_")},
            "REGSCAN_URL": stack.api.base,
            "XDG_CONFIG_HOME": str(home / "config"),
            "PYTHONPATH": str(Path.cwd()),
        }

    def run(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "regscan.cli", *args],
            env={**self.env, **env},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def login(self) -> None:
        done = self.run("login", "--user", ADMIN[0], "--password-stdin", stdin=ADMIN[1] + "\n")
        assert done.returncode == 0, done.stderr


@pytest.fixture
def cli(stack: Stack, tmp_path: Path) -> Cli:
    return Cli(stack, tmp_path)


def one_line_error(done: subprocess.CompletedProcess, code: int = 1) -> str:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regscan: "), done.stderr
    return lines[0]


def test_login_keeps_a_token_only_the_user_can_read(cli: Cli, api: Api):
    # When the user logs in with a password
    cli.login()

    # Then a token (not the password) is kept, mode 0600 in a 0700 folder
    path = cli.home / "config" / "regscan" / "login.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert saved["url"] == api.base and saved["token"] and ADMIN[1] not in path.read_text()

    # And later commands use it
    jobs = cli.run("jobs", "--limit", "3")
    assert jobs.returncode == 0, jobs.stderr

    # And a token the server no longer knows says to log in again, in one line
    path.write_text(json.dumps({**saved, "token": "expired"}))
    assert "run `regscan login` again" in one_line_error(cli.run("status"))

    # And logging out forgets it
    assert cli.run("logout").returncode == 0 and not path.exists()


def test_follow_shows_live_progress_in_a_terminal(
    cli: Cli, api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    # Given a sweep of six images that takes a few seconds
    repo = f"{name}/app"
    for n in range(6):
        pusher.push_image(repo, f"v{n}", {f"f{n}": f"{n}".encode()})
    slow_registry.delay(0.6, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=0, scanners=1))
    cli.login()

    # When it is started with --follow in a terminal
    term = pexpect.spawn(
        sys.executable,
        ["-m", "regscan.cli", "scan", "--follow", "--interval", "0.3"],
        env={**cli.env, "TERM": "xterm-256color"},
        dimensions=(30, 120),
        encoding="utf-8",
        timeout=90,
    )
    term.expect(pexpect.EOF)
    term.close()
    screen = term.before

    # Then the terminal got a live view redrawn in place: a bar whose count moved through
    # the sweep, the rate, and the line saying how it ended
    assert term.exitstatus == 0, screen
    assert "\x1b[" in screen  # redrawn with cursor movements, not printed line by line
    plain = ANSI.sub("", screen)
    assert "━" in plain and "images/s" in plain
    seen = {int(n) for n in re.findall(r"\b(\d)/6\b", plain)}
    assert len(seen) >= 3 and 6 in seen, f"the count did not move: {sorted(seen)}\n{plain}"
    assert re.search(r"scan \d+ completed: 6 scanned, 0 failed, 0 skipped of 6 images", plain)


def test_follow_prints_plain_lines_in_a_pipe(
    cli: Cli, api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    repo = f"{name}/app"
    for n in range(4):
        pusher.push_image(repo, f"v{n}", {f"f{n}": f"{n}".encode()})
    slow_registry.delay(0.6, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=0, scanners=1))

    credentials = {"REGSCAN_USER": ADMIN[0], "REGSCAN_PASSWORD": ADMIN[1]}
    done = cli.run("scan", "--follow", "--interval", "0.3", **credentials)

    # A line per change, no escape codes, counts that only grow, and the end
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("regular scan ") and "every image in scope" in lines[0]
    counts = [int(m.group(1)) for line in lines if (m := re.search(r": (\d)/4 images", line))]
    assert counts == sorted(counts) and len(set(counts)) >= 2, done.stdout
    assert len(lines) == len(set(lines))  # printed when something changed, not every poll
    end = r"scan \d+ completed: 4 scanned, 0 failed, 0 skipped of 4 images in .+"
    assert re.fullmatch(end, lines[-1]), lines[-1]


@pytest.fixture
def vulnerable(
    stack: Stack, api: Api, pusher: Pusher, registry: RegistryServer, name: str, tmp_path: Path
) -> dict[str, str]:
    """An image holding a package with a high finding (fixed in 2.32.0) and a low one."""
    i = Ids(name)
    records = [
        osv_record(
            i.cve(1),
            hit("PyPI", i.pkg("requests"), {"introduced": "0"}, {"fixed": "2.32.0"}),
            severity=cvss("CVSS_V3", HIGH_V3),
            summary="a high one",
        ),
        osv_record(
            i.cve(2),
            hit("PyPI", i.pkg("requests"), {"introduced": "0"}),
            database_specific={"severity": "LOW"},
        ),
    ]
    folder = write_records(tmp_path / "osv", records)
    imported = import_cli(stack, folder)
    assert imported.returncode == 0, imported.stderr
    repo = f"{name}/py"
    pusher.push_image(repo, "1", dist_info(i.pkg("requests"), "2.31.0"))
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    return {
        "image": f"{registry.host}/{repo}:1",
        "high": i.cve(1),
        "low": i.cve(2),
        "package": i.pkg("requests"),
    }


def test_exit_code_gates_a_build_on_severity(cli: Cli, vulnerable: dict[str, str]):
    cli.login()
    image = vulnerable["image"]

    # A scan that waits, and fails the build on high findings
    done = cli.run("scan", image, "--on-demand", "--exit-code", "3", "--severity", "high")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert re.search(r"scan \d+ completed: 1 scanned", done.stdout)
    assert "1 findings at or above high (1 high): exit code 3" in done.stderr

    # Nothing critical: the build passes
    done = cli.run("results", image, "--exit-code", "3", "--severity", "critical")
    assert done.returncode == 0, done.stderr
    assert "no findings at or above critical" in done.stderr

    # Any severity (Trivy's list form counts its least severe)
    done = cli.run("results", image, "--exit-code", "5", "--severity", "LOW,HIGH")
    assert done.returncode == 5
    assert "2 findings at or above low (1 high, 1 low): exit code 5" in done.stderr


def test_results_in_every_format(cli: Cli, vulnerable: dict[str, str]):
    cli.login()
    image, high, low = vulnerable["image"], vulnerable["high"], vulnerable["low"]
    assert cli.run("scan", image, "--on-demand", "--wait").returncode == 0

    # A table with the severity, the fixed version and the counts
    table = cli.run("results", image, COLUMNS="200")
    assert table.returncode == 0, table.stderr
    assert high in table.stdout and "HIGH" in table.stdout and "2.32.0" in table.stdout
    assert "Total: 2 (CRITICAL: 0, HIGH: 1, MEDIUM: 0, LOW: 1, UNKNOWN: 0)" in table.stdout
    only_high = cli.run("results", image, "--severity", "high", COLUMNS="200")
    assert high in only_high.stdout and low not in only_high.stdout

    # JSON, CSV and CycloneDX for machines
    [result] = json.loads(cli.run("results", image, "--format", "json").stdout)
    assert {v["cve"] for v in result["vulnerabilities"]} == {high, low}
    csv = cli.run("results", image, "--format", "csv").stdout.splitlines()
    assert csv[0].startswith("Registry,Repository,Tag") and any(high in row for row in csv)
    bom = json.loads(cli.run("results", image, "--format", "cyclonedx").stdout)
    assert bom["bomFormat"] == "CycloneDX" and {v["id"] for v in bom["vulnerabilities"]} == {
        high,
        low,
    }

    # By vulnerability and by package, across the fleet
    by_cve = cli.run("results", "--cve", high, COLUMNS="200")
    assert "1 affected images" in by_cve.stdout and vulnerable["package"] in by_cve.stdout
    by_package = cli.run("results", "--package", vulnerable["package"], COLUMNS="200")
    assert "held by 1 images" in by_package.stdout and "2.31.0" in by_package.stdout


def test_stop_jobs_and_status(
    cli: Cli, api: Api, pusher: Pusher, slow_registry: FaultProxy, name: str
):
    repo = f"{name}/app"
    for n in range(3):
        pusher.push_image(repo, f"v{n}", {f"f{n}": f"{n}".encode()})
    # Slow enough that the sweep still runs after the CLI has started three times on a
    # busy machine; a stop ends it at its next image.
    slow_registry.delay(8, path_prefix=f"/v2/{repo}/manifests")
    api.set_specs(spec(f"http://{slow_registry.host}", repo, cap=0, scanners=1))
    cli.login()
    started = cli.run("scan")
    job_id = int(re.search(r"scan (\d+)", started.stdout).group(1))

    # A second one is refused while it runs: one line saying which scan runs
    assert f"{job_id}" in one_line_error(cli.run("scan"))
    status = cli.run("status")
    assert status.returncode == 0 and f"regular scan {job_id} running" in status.stdout
    assert "next scheduled sweep:" in status.stdout and "vulnerability data:" in status.stdout

    stopped = cli.run("stop")
    assert stopped.stdout.strip() == f"regular scan {job_id} is stopping"
    assert api.wait_job(job_id)["status"] == "stopped"
    jobs = cli.run("jobs", "--kind", "regular-all", "--limit", "5", COLUMNS="200")
    assert re.search(rf"\b{job_id}\b.*stopped", jobs.stdout)


def test_every_failure_is_one_line(cli: Cli, stack: Stack):
    assert "cannot reach regscan" in one_line_error(
        cli.run("status", REGSCAN_URL=f"http://127.0.0.1:{free_port()}")
    )
    assert "invalid username or password" in one_line_error(
        cli.run("jobs", REGSCAN_USER="admin", REGSCAN_PASSWORD="wrong")
    )
    assert "authentication required" in one_line_error(cli.run("jobs"))
    cli.login()
    assert "no scan result for" in one_line_error(cli.run("results", "127.0.0.1:1/none/x:1"))
    assert "not a full image name" in one_line_error(cli.run("scan", "nothing"))
    assert "exactly one of" in one_line_error(cli.run("results", "--cve", "X", "--package", "y"))
    assert "need an IMAGE" in one_line_error(cli.run("scan", "--exit-code", "1"))
    one_line_error(cli.run("scan", "127.0.0.1:1/outside/x:1", "--on-demand"))
    bad_config = cli.run("jobs", REGSCAN_LOG_FORMAT="xml")
    assert "invalid configuration: REGSCAN_LOG_FORMAT" in one_line_error(bad_config, 2)
