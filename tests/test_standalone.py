"""``regscan standalone`` as a user runs it: it stops every process it started, however
it is stopped (Ctrl-C, SIGTERM, the terminal closed under it, or killed outright)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testbed.services import free_port, stop_process
from testbed.stack import wait_for

pytestmark = pytest.mark.e2e


class Standalone:
    def __init__(self, workdir: Path, settings: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGSCAN_")}
        env.update(settings or {})
        self.log = workdir / "standalone.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regscan.cli", "standalone", "--port", str(self.port)],
                cwd=workdir,
                env={**env, "PYTHONPATH": str(Path.cwd())},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self._answers, 60, "the standalone's API")
        except BaseException:
            stop_process(self.proc, timeout=30)  # a standalone that failed to start is not left
            raise
        self.children = _children(self.proc.pid)

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/api/v1/_ping", timeout=1).ok
        except (requests.ConnectionError, requests.Timeout):  # not up, or still starting
            return False


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    started = Standalone(tmp_path)
    try:
        yield started
    finally:
        stop_process(started.proc, timeout=30)
        for pid in started.children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_closing_its_terminal_stops_every_process_it_started(standalone: Standalone):
    # Given the standalone with its Redis, API, two workers and scheduler
    assert len(standalone.children) == 5

    # When the terminal running it is closed (SIGHUP)
    standalone.proc.send_signal(signal.SIGHUP)

    # Then it stops them all and exits cleanly, and its port is free again
    assert standalone.proc.wait(timeout=60) == 0
    wait_for(lambda: not any(_alive(p) for p in standalone.children), 30, "every child to exit")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{standalone.port}/api/v1/_ping", timeout=1)


def test_its_children_stop_by_themselves_when_it_is_killed(standalone: Standalone):
    # When the standalone dies without a chance to stop anything (SIGKILL)
    standalone.proc.kill()
    standalone.proc.wait()

    # Then its children notice and stop on their own, leaving its port free
    wait_for(lambda: not any(_alive(p) for p in standalone.children), 60, "every child to exit")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{standalone.port}/api/v1/_ping", timeout=1)


def test_its_api_runs_several_processes_that_stop_with_it(tmp_path: Path):
    # Given the standalone told to run two API processes
    started = Standalone(tmp_path, {"REGSCAN_API_WORKERS": "2"})
    try:
        [api] = [p for p in started.children if " api " in _command_line(p)]
        serving = wait_for(lambda: len(_children(api)) == 2 and _children(api), 60, "2 processes")

        # Then each of them answers on the API's port alone (the other paused)
        for pid in serving:
            other = next(p for p in serving if p != pid)
            os.kill(other, signal.SIGSTOP)
            try:
                wait_for(lambda: _pings(started.port), 60, f"API process {pid} to answer")
            finally:
                os.kill(other, signal.SIGCONT)

        # When the standalone is killed outright, they stop too, and the port is free
        started.proc.kill()
        started.proc.wait()
        everything = started.children + serving
        wait_for(lambda: not any(_alive(p) for p in everything), 60, "every process to exit")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{started.port}/api/v1/_ping", timeout=1)
    finally:
        stop_process(started.proc, timeout=30)
        for pid in started.children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _pings(port: int) -> bool:
    """An answer on a new connection (a kept one would stay with one process)."""
    try:
        r = requests.get(
            f"http://127.0.0.1:{port}/api/v1/_ping", headers={"Connection": "close"}, timeout=2
        )
    except requests.RequestException:
        return False
    return r.status_code == 200
