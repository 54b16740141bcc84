"""Fault injection through real sockets.

:class:`FaultProxy` sits between a client and an HTTP/1.1 server (the registry) and can
delay, fail or drop requests on demand while relaying everything else unchanged, body
streamed in chunks.  :class:`ListeningSocket` is a port that accepts connections and
counts them, for a server that must never be contacted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import urlsplit

_CHUNK = 64 * 1024
_MAX_LINE = 64 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade"}

Headers = list[tuple[str, str]]


class _ProtocolError(Exception):
    """The peer sent something this proxy does not understand, or hung up."""


@dataclass
class _Rule:
    remaining: int
    path_prefix: str | None
    status: int = 0
    retry_after: int | None = None
    after: int = 0  # cut_next: body bytes relayed before the cut
    stall: float = 0.0  # cut_next: seconds to hold the connection open, silent, then close


def _matches(prefix: str | None, path: str) -> bool:
    return prefix is None or path.startswith(prefix)


def _read_line(reader: BinaryIO) -> bytes:
    line = reader.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _ProtocolError("line too long")
    return line


def _read_head(reader: BinaryIO) -> tuple[str, Headers] | None:
    """Read a start line and headers; None on a clean end of stream before them."""
    line = _read_line(reader)
    while line in (b"\r\n", b"\n"):  # stray empty lines between messages are allowed
        line = _read_line(reader)
    if not line:
        return None
    start = line.decode("latin-1").rstrip("\r\n")
    headers: Headers = []
    while True:
        line = _read_line(reader)
        if not line:
            raise _ProtocolError("end of stream inside headers")
        if line in (b"\r\n", b"\n"):
            return start, headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))


def _header(headers: Headers, name: str) -> str | None:
    name = name.lower()
    values = [value for key, value in headers if key.lower() == name]
    return ", ".join(values) if values else None


def _tokens(headers: Headers, name: str) -> set[str]:
    value = _header(headers, name) or ""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def _copy_exact(reader: BinaryIO, length: int, send: Callable[[bytes], object]) -> None:
    while length > 0:
        data = reader.read(min(length, _CHUNK))
        if not data:
            raise _ProtocolError("end of stream inside a body")
        send(data)
        length -= len(data)


def _copy_chunked(reader: BinaryIO, send: Callable[[bytes], object]) -> None:
    """Relay a chunked body verbatim, trailers included."""
    while True:
        line = _read_line(reader)
        if not line:
            raise _ProtocolError("end of stream inside a chunked body")
        send(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _ProtocolError(f"bad chunk size line {line!r}") from exc
        if size == 0:
            while True:
                line = _read_line(reader)
                send(line)
                if line in (b"\r\n", b"\n", b""):
                    return
        _copy_exact(reader, size + 2, send)


def _discard(_data: bytes) -> None:
    return None


def _body_framing(headers: Headers) -> tuple[str, int]:
    """("chunked", 0), ("length", n) or ("none", 0) for a request."""
    if "chunked" in _tokens(headers, "Transfer-Encoding"):
        return "chunked", 0
    length = _header(headers, "Content-Length")
    if length is None:
        return "none", 0
    try:
        return "length", int(length.split(",")[0])
    except ValueError as exc:
        raise _ProtocolError(f"bad Content-Length {length!r}") from exc


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _render_head(start: str, headers: Headers) -> bytes:
    lines = [start, *(f"{name}: {value}" for name, value in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream_host:upstream_port``.

    Client connections may be kept alive; each request goes upstream on a connection of
    its own with ``Connection: close``.  The ``Host`` header is passed on unchanged, so a
    registry builds its ``Location`` headers with the proxy's address.

    Every request is recorded in :attr:`requests` as ``(method, target)``, where
    ``target`` is the path and query exactly as the client sent it.  Faults can be
    changed at any time from any thread; for each request the proxy first sleeps for a
    matching :meth:`delay`, then applies a matching :meth:`drop_next`, then a matching
    :meth:`fail_next`, and relays the request otherwise (cutting its answer's body
    short after the headers when a :meth:`cut_next` matches).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, timeout: float = 60.0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.timeout = timeout
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._requests: list[tuple[str, str]] = []
        self._delays: dict[str | None, float] = {}
        self._fails: list[_Rule] = []
        self._drops: list[_Rule] = []
        self._cuts: list[_Rule] = []
        self._clients: set[socket.socket] = set()
        self._connections = 0
        self._forwarded = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str, *, timeout: float = 60.0) -> FaultProxy:
        """A proxy in front of the server of ``http://host:port``."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    # -- what happened -----------------------------------------------------------------
    @property
    def requests(self) -> list[tuple[str, str]]:
        """A copy of the ``(method, target)`` of every request received so far."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def forwarded(self) -> int:
        """Requests that reached the upstream server."""
        with self._lock:
            return self._forwarded

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """How many recorded requests have this method and start with this path."""
        return sum(
            1
            for seen_method, target in self.requests
            if (method is None or seen_method == method) and _matches(path_prefix, target)
        )

    @property
    def max_in_flight(self) -> int:
        """The most requests this proxy was handling at once (delays included)."""
        with self._lock:
            return self._max_in_flight

    def clear(self) -> None:
        """Forget the recorded requests and counters (faults stay)."""
        with self._lock:
            self._requests.clear()
            self._connections = 0
            self._forwarded = 0
            self._max_in_flight = 0

    # -- faults ------------------------------------------------------------------------
    def delay(self, seconds: float, path_prefix: str | None = None) -> None:
        """Sleep ``seconds`` before handling each request under ``path_prefix``.

        The longest matching delay applies; ``delay(0, prefix)`` removes one.
        """
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: int | None = None,
        path_prefix: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` and a JSON error body.

        Such requests never reach the upstream server.
        """
        with self._lock:
            self._fails.append(_Rule(n, path_prefix, status, retry_after))

    def drop_next(self, n: int, path_prefix: str | None = None) -> None:
        """Close the client connection instead of answering the next ``n`` matching requests."""
        with self._lock:
            self._drops.append(_Rule(n, path_prefix))

    def cut_next(
        self, n: int, path_prefix: str | None = None, *, after: int = 0, stall: float = 0.0
    ) -> None:
        """Relay the next ``n`` matching answers' status and headers and the first
        ``after`` bytes of their body, then stop: stay silent for ``stall`` seconds (a
        server that hangs mid-body), then close the connection (a body cut short)."""
        with self._lock:
            self._cuts.append(_Rule(n, path_prefix, after=after, stall=stall))

    def reset(self) -> None:
        """Remove every fault; the proxy relays everything again."""
        with self._lock:
            self._delays.clear()
            self._fails.clear()
            self._drops.clear()
            self._cuts.clear()

    def _delay_for(self, path: str) -> float:
        with self._lock:
            return max(
                (s for prefix, s in self._delays.items() if _matches(prefix, path)), default=0.0
            )

    def _take(self, rules: list[_Rule], path: str) -> _Rule | None:
        with self._lock:
            for rule in rules:
                if rule.remaining > 0 and _matches(rule.path_prefix, path):
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        rules.remove(rule)
                    return rule
        return None

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting, and close every open client connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            _close_socket(client)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- serving -----------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
                self._clients.add(client)
            threading.Thread(
                target=self._handle, args=(client,), name="fault-proxy-conn", daemon=True
            ).start()

    def _handle(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while not self._closed.is_set():
                if not self._handle_one(client, reader):
                    break
        except (OSError, _ProtocolError):
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            reader.close()
            _close_socket(client)

    def _handle_one(self, client: socket.socket, reader: BinaryIO) -> bool:
        """Serve one request; True if the client connection stays open."""
        head = _read_head(reader)
        if head is None:
            return False
        start, headers = head
        try:
            method, target, version = start.split(" ", 2)
        except ValueError as exc:
            raise _ProtocolError(f"bad request line {start!r}") from exc
        if target.startswith(("http://", "https://")):  # absolute form: keep path and query
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with self._lock:
            self._requests.append((method, target))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return self._answer(client, reader, method, target, version, headers)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(
        self,
        client: socket.socket,
        reader: BinaryIO,
        method: str,
        target: str,
        version: str,
        headers: Headers,
    ) -> bool:
        connection = _tokens(headers, "Connection")
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        framing, length = _body_framing(headers)

        seconds = self._delay_for(target)
        if seconds and self._closed.wait(seconds):
            return False
        if self._take(self._drops, target) is not None:
            self._skip_body(reader, framing, length)
            return False
        rule = self._take(self._fails, target)
        if rule is not None:
            self._skip_body(reader, framing, length)
            self._send_error(client, rule.status, rule.retry_after, keep_alive)
            return keep_alive
        cut = self._take(self._cuts, target)
        return self._forward(
            client, reader, method, target, headers, framing, length, keep_alive, cut
        )

    @staticmethod
    def _skip_body(reader: BinaryIO, framing: str, length: int) -> None:
        if framing == "chunked":
            _copy_chunked(reader, _discard)
        elif framing == "length":
            _copy_exact(reader, length, _discard)

    @staticmethod
    def _send_error(
        client: socket.socket, status: int, retry_after: int | None, keep_alive: bool
    ) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Injected Fault"
        code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
        body = json.dumps(
            {"errors": [{"code": code, "message": "injected by FaultProxy", "detail": status}]}
        ).encode()
        headers: Headers = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Docker-Distribution-Api-Version", "registry/2.0"),
        ]
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        client.sendall(_render_head(f"HTTP/1.1 {status} {reason}", headers) + body)

    @staticmethod
    def _read_response_head(reader: BinaryIO) -> tuple[str, Headers, int]:
        head = _read_head(reader)
        if head is None:
            raise _ProtocolError("upstream closed without answering")
        status_line, headers = head
        try:
            return status_line, headers, int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise _ProtocolError(f"bad status line {status_line!r}") from exc

    def _forward(
        self,
        client: socket.socket,
        reader: BinaryIO,
        method: str,
        target: str,
        headers: Headers,
        framing: str,
        length: int,
        keep_alive: bool,
        cut: _Rule | None = None,
    ) -> bool:
        try:
            upstream = socket.create_connection(
                (self.upstream_host, self.upstream_port), timeout=self.timeout
            )
        except OSError:
            self._skip_body(reader, framing, length)
            self._send_error(client, 502, None, keep_alive)
            return keep_alive
        with upstream, upstream.makefile("rb") as upstream_reader:
            named = _tokens(headers, "Connection")
            request_headers = [
                (name, value)
                for name, value in headers
                if name.lower() not in _HOP_BY_HOP and name.lower() not in named
            ]
            request_headers.append(("Connection", "close"))
            upstream.sendall(_render_head(f"{method} {target} HTTP/1.1", request_headers))
            if framing == "chunked":
                _copy_chunked(reader, upstream.sendall)
            elif framing == "length":
                _copy_exact(reader, length, upstream.sendall)
            with self._lock:
                self._forwarded += 1

            while True:
                try:
                    status_line, response_headers, status = self._read_response_head(
                        upstream_reader
                    )
                except (OSError, _ProtocolError):
                    # Nothing was relayed yet, so the client can still get a clean answer.
                    self._send_error(client, 502, None, keep_alive=False)
                    return False
                if 100 <= status < 200 and status != 101:  # interim answer: pass it on
                    client.sendall(_render_head(status_line, response_headers))
                    continue
                break

            named = _tokens(response_headers, "Connection")
            relayed = [
                (name, value)
                for name, value in response_headers
                if name.lower() not in _HOP_BY_HOP and name.lower() not in named
            ]
            if method == "HEAD" or status in (204, 304):
                body = "none"
            elif "chunked" in _tokens(response_headers, "Transfer-Encoding"):
                body = "chunked"
            elif _header(response_headers, "Content-Length") is not None:
                body = "length"
            else:
                body = "until-close"
            persist = keep_alive and body != "until-close"
            relayed.append(("Connection", "keep-alive" if persist else "close"))
            client.sendall(_render_head(status_line, relayed))
            if cut is not None and body != "none":
                self._relay_cut(upstream_reader, client, cut)
                return False
            if body == "chunked":
                _copy_chunked(upstream_reader, client.sendall)
            elif body == "length":
                _, response_length = _body_framing(response_headers)
                _copy_exact(upstream_reader, response_length, client.sendall)
            elif body == "until-close":
                while data := upstream_reader.read1(_CHUNK):
                    client.sendall(data)
            return persist

    def _relay_cut(self, upstream: BinaryIO, client: socket.socket, cut: _Rule) -> None:
        """The first ``cut.after`` bytes of the body as they come, then the fault."""
        left = cut.after
        while left > 0 and (data := upstream.read1(min(left, _CHUNK))):
            client.sendall(data)
            left -= len(data)
        if cut.stall:
            self._closed.wait(cut.stall)


class ListeningSocket:
    """A TCP port on 127.0.0.1 that accepts connections, counts them and closes them.

    Point a client at :attr:`url` where it must never connect, then assert that
    :attr:`connections` is still 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="listening-socket", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._count

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._count += 1
            connection.close()

    def close(self) -> None:
        """Stop listening."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
