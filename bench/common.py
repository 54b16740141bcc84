"""What the benchmarks share: their error, a fresh migrated database of either kind and
the facts about it, and a ``main`` that cleans up after Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from regscan.db import upgrade
from testbed.services import fresh_postgres_database, postgres_url, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """The run cannot go on, or its figures cannot be trusted."""


def open_database(kind: str, stack: contextlib.ExitStack, tmp: Path) -> str:
    """A fresh, migrated database (``sqlite`` in ``tmp``, or ``postgresql`` on the test
    server, dropped when ``stack`` closes); its URL."""
    if kind == "postgresql":
        server = postgres_url()
        if server is None:
            raise BenchError("no PostgreSQL at 127.0.0.1:5432 (or REGSCAN_TEST_POSTGRES_URL)")
        url = stack.enter_context(fresh_postgres_database(server, "regscan_bench"))
    else:
        url = f"sqlite:///{tmp / 'regscan.db'}"
    upgrade(url)
    return url


@contextlib.contextmanager
def regscan_process(
    args: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``regscan <args>`` from this checkout, output appended to ``log_path``; stopped
    (terminated, killed after 10 s) when the block ends."""
    with open(log_path, "ab") as log:
        # A session of its own: a terminal Ctrl-C reaches us only, and we stop it in order.
        proc = subprocess.Popen(
            [sys.executable, "-m", "regscan.cli", *args],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc, timeout=10)


def database_facts(kind: str, url: str) -> str:
    if kind == "sqlite":
        return f"sqlite {sqlite3.sqlite_version} (file in a temp dir, WAL)"
    with psycopg.connect(url) as conn:
        version = conn.info.server_version
    return f"postgresql {version // 10000}.{version % 10000} (127.0.0.1, fresh database)"


def _interrupt(_signum: int, _frame: Any) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C, so every process and database is cleaned up.
    raise KeyboardInterrupt


def run_main(
    run: Callable[[contextlib.ExitStack], int], before_cleanup: Callable[[], None] | None = None
) -> int:
    """Run a benchmark with a stack that holds what it started; the exit status."""
    signal.signal(signal.SIGTERM, _interrupt)
    stack = contextlib.ExitStack()
    try:
        return run(stack)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if before_cleanup is not None:
            before_cleanup()
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
