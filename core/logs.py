"""How every regscan process logs.

``REGSCAN_LOG_FORMAT=text`` (the default) writes one readable line per event;
``json`` writes one JSON object per line, for log pipelines:

    {"time": "...", "level": "INFO", "logger": "worker.images", "message": "...",
     "process": 1234, "job": 12, "image": "host/repo:tag", "team": "admin",
     "task": "regscan.scan_image"}

``job``, ``image``, ``team`` and ``task`` are there when the line is written on behalf
of one (:func:`log_context`); the worker sets them around each task and scan.

No secret is ever written: the configured secrets (admin password, secret keys,
webhook, callback and metrics secrets), the registry passwords a worker decrypts
(:func:`add_secret`), and passwords inside URLs are replaced by ``[redacted]`` in the
finished line, whatever code wrote it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from core.secrets import webhook_secret
from core.settings import Settings

CONTEXT_FIELDS = ("job", "image", "team", "task")
REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# A secret shorter than this is not searched for: it would mask ordinary words.
MIN_SECRET_LENGTH = 4
# user:password@ in URLs (database, Redis, registries).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")

_context: ContextVar[dict[str, Any]] = ContextVar("regscan_log_context", default={})  # noqa: B039 - never mutated


# -- context -----------------------------------------------------------------------------


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Lines logged inside name these fields too (``job=12``, ``image=...``); empty
    values are left out, and the enclosing context's fields are kept."""
    token = _context.set({**_context.get(), **_present(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def set_context(**fields: Any) -> None:
    """Start a fresh context for this thread's next lines (a Celery task starting)."""
    _context.set(_present(fields))


def clear_context() -> None:
    _context.set({})


def current_context() -> dict[str, Any]:
    return dict(_context.get())


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k in CONTEXT_FIELDS and v not in (None, "")}


# -- secrets -----------------------------------------------------------------------------


class _Secrets:
    """The values no log line may contain, as written and as JSON escapes them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._values: frozenset[str] = frozenset()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        forms = {value, json.dumps(value)[1:-1]}
        with self._guard:
            self._values = self._values | forms

    def redact(self, text: str) -> str:
        # Longest first, so that a secret containing another is masked whole.
        for value in sorted(self._values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, REDACTED)
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)


_secrets = _Secrets()


def add_secret(value: str | None) -> None:
    """Never write ``value`` in a log line from now on (a decrypted registry password)."""
    _secrets.add(value)


def redact(text: str) -> str:
    return _secrets.redact(text)


def add_configured_secrets(settings: Settings) -> None:
    """Every secret the settings hold."""
    for secret in (
        settings.admin_password,
        settings.webhook_secret,
        settings.callback_secret,
        settings.metrics_token,
    ):
        add_secret(secret.get_secret_value() if secret else None)
    if settings.secret_key is not None:
        for key in settings.secret_key.get_secret_value().split(","):
            add_secret(key.strip())
    add_secret(webhook_secret(settings))


# -- formatters --------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """The readable line, with the context's fields appended."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context.get()
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return redact(line)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, process, the context."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message", "process"],
            rename_fields={"levelname": "level", "name": "logger"},
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat()
        super().add_fields(log_data, record, message_dict)
        log_data.update(_context.get())

    def format(self, record: logging.LogRecord) -> str:
        # A message spread over several lines stays one line: JSON escapes the newlines.
        return redact(super().format(record))


def say_as_json(message: str, stream: Any = None) -> None:
    """Write ``message`` as one JSON line straight to a stream's file descriptor, taking
    no lock: for what Celery prints from its signal handlers ("worker: Warm shutdown")."""
    entry = {
        "time": datetime.now(UTC).isoformat(),
        "level": "INFO",
        "logger": "celery.apps.worker",
        "message": redact(str(message)),
        "process": os.getpid(),
    }
    out = stream if stream is not None else sys.__stderr__
    os.write(out.fileno() if out is not None else 2, (json.dumps(entry) + "\n").encode())


def formatter(settings: Settings) -> logging.Formatter:
    return JsonLineFormatter() if settings.log_format == "json" else TextFormatter()


def configure(settings: Settings, level: int = logging.INFO) -> None:
    """Send every logger's lines to stderr in the configured format, secrets masked."""
    add_configured_secrets(settings)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings too, or they would be printed as lines of their own.
    logging.captureWarnings(True)
