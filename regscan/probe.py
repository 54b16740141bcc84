"""``regscan worker-check``: the health check of one worker, for a container probe.

A worker is healthy when it answers a ping over the broker (its consumer loop runs,
whatever its threads are busy with) and the database answers. Exits 0 with one line
saying so, else 1 with one line saying what is wrong.
"""

from __future__ import annotations

from celery.utils.nodenames import host_format
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from core.settings import Settings
from core.tasks import make_celery
from models.db import make_engine
from regscan.errors import CliError


def check_worker(settings: Settings, name: str, timeout: float) -> str:
    node = host_format(name)
    _check_database(settings)
    app = make_celery(settings)
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    except Exception as exc:  # the broker is down: kombu raises its transport's errors
        problem = type(exc).__name__
        raise CliError(f"worker {node}: the broker (Redis) is not answering ({problem})") from None
    finally:
        app.close()
    if not any(node in reply for reply in replies):
        raise CliError(f"worker {node} did not answer a ping within {timeout:g}s")
    return f"worker {node} is healthy"


def _check_database(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise CliError(f"the database is not answering ({type(exc).__name__})") from None
    finally:
        engine.dispose()
