"""Engines and sessions. The caller (an API request, a task wrapper) owns the transaction."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str, *, idle_transaction_seconds: float | None = None, **kwargs: Any
) -> Engine:
    """An engine for ``url``.

    ``idle_transaction_seconds`` (PostgreSQL) has the server end a transaction that
    sits idle longer than that: a worker frozen mid-transaction must not keep row
    locks on a job after its lease has lapsed and another worker took the job over.
    """
    if url.startswith("sqlite"):
        _private_file(url)
        # Several processes (API, workers) share one file: WAL lets readers run
        # beside the writer, and busy_timeout makes writers queue instead of failing.
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if idle_transaction_seconds and url.startswith("postgresql"):
        timeout_ms = int(idle_transaction_seconds * 1000)
        kwargs.setdefault("connect_args", {})["options"] = (
            f"-c idle_in_transaction_session_timeout={timeout_ms}"
        )
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _private_file(url: str) -> None:
    """Create a SQLite database file readable by its owner only, before SQLite creates
    it with the process's umask."""
    path = make_url(url).database
    if path and path != ":memory:":
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session
