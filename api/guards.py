"""What every request passes before a route sees it: a bound on the body's size (checked
before it is read), no control characters in the URL, and no caching of answers.

Text that reaches the database must hold no NUL (PostgreSQL refuses it) nor other
control or bidirectional-override characters (they hide what a value really says);
:func:`check_text` is the one check, used on URLs here and on JSON bodies by
``api.schemas.parse_json_body``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# C0 controls but tab, newline and carriage return; DEL; the bidirectional overrides
# and isolates, which make text display other than it reads.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def check_text(value: str) -> str | None:
    """Why ``value`` may not be stored, or None when it may."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    return f"contains the control character U+{ord(found.group()):04X}"


class RequestGuards:
    """An ASGI middleware: 413 for a body over ``max_body_bytes`` (from Content-Length
    before anything is read, or while it streams in), 400 for a URL with control
    characters, and ``Cache-Control: no-store`` on every answer (some carry secrets:
    tokens, the webhook secret)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._url_problem(scope)
        if problem is not None:
            await _answer(send, 400, problem)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, self._too_large())
            return
        await self.app(scope, self._counting(receive, send), self._no_store(send))

    def _url_problem(self, scope: Scope) -> str | None:
        for part, text in (
            ("path", scope.get("path", "")),
            ("query", unquote(scope.get("query_string", b"").decode("latin-1"))),
        ):
            why = check_text(text)
            if why is not None:
                return f"the URL's {part} {why}: remove it"
        return None

    def _too_large(self) -> str:
        return f"request body is over {self.max_body_bytes} bytes: split it into smaller requests"

    def _counting(self, receive: Receive, send: Send) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(self._too_large())
            return message

        return counted

    @staticmethod
    def _no_store(send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        return sending


class BodyTooLarge(Exception):
    """A body streamed in past the limit (no Content-Length said so beforehand)."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"err": message}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def walk_strings(value: Any, depth: int = 0) -> str | None:
    """Why a parsed JSON value may not be taken (too deep, or a string with forbidden
    characters), or None."""
    if depth > MAX_JSON_DEPTH:
        return f"nests deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, dict):
        for key, item in value.items():
            why = check_text(key) or walk_strings(item, depth + 1)
            if why is not None:
                return why
    elif isinstance(value, list):
        for item in value:
            why = walk_strings(item, depth + 1)
            if why is not None:
                return why
    return None


MAX_JSON_DEPTH = 32
