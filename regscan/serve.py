"""Serving the API: plain HTTP, and HTTPS beside it when a certificate is configured.

Both listeners run in one process and one event loop, on the same application. The
process's signals are handled here rather than by each uvicorn server: SIGINT and
SIGTERM stop both, and SIGHUP reads the certificate and key again, so a renewed
certificate is served to new connections without a restart (connections already
open keep the certificate they started with).

One process serves requests on one core at a time (the interpreter's lock), so
``regscan api`` runs several: it binds the sockets once, and :func:`run_workers` forks
that many serving processes, which share them. Each takes new connections from the same
sockets (the kernel hands a connection to whichever process accepts it first, so a
busy one takes fewer), keeps nothing a request depends on in its own memory (who may
do what, counts and limits live in the database and Redis), and is stopped, or told
to reload its certificate, by the process that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from regscan.processes import dies_with

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """One address to serve the API on; with ``cert_file`` and ``key_file``, over TLS."""

    host: str
    port: int
    cert_file: str = ""
    key_file: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.cert_file and self.key_file)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to :func:`serve`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_certificate(cert_file: str, key_file: str) -> None:
    """Raise ``ssl.SSLError`` or ``OSError`` unless the files are a usable key pair."""
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)


def serve(
    app: Any,
    listeners: list[Listener],
    trusted_proxies: str = "",
    sockets: Sequence[socket.socket] | None = None,
) -> None:
    """Serve ``app`` on every listener until SIGINT or SIGTERM, on ``sockets`` (one per
    listener, already listening) when given. ``X-Forwarded-For`` is believed from
    ``trusted_proxies`` (comma-separated addresses) only: from anyone else, a guesser
    would name a new client address with every attempt."""
    servers = [_Server(_config(app, listener, trusted_proxies)) for listener in listeners]
    asyncio.run(_serve_all(servers, listeners, sockets))


def bind(listener: Listener) -> socket.socket:
    """A socket bound to ``listener``'s address that child processes inherit. Binding
    once here, not in each process, keeps "address already in use" an error at start.
    It is not listening yet: the first process to serve makes it listen, so until one
    does a client is refused at once rather than left waiting."""
    try:
        infos = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {listener.host}: {exc}") from None
    family, _type, _proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listener.host}:{listener.port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def run_workers(serve_one: Callable[[], int], workers: int) -> int:
    """Run ``serve_one()`` in ``workers`` processes forked from this one (so they start
    without importing anything again, and share the sockets it bound) until SIGINT or
    SIGTERM, which each of them is then sent; SIGHUP is passed on to each (they reload
    their certificate). When one of them exits on its own the others are stopped too and
    1 is returned: a process that cannot serve (its database or Redis settings are
    wrong) fails every other the same way, and whoever runs ``regscan api`` (compose,
    systemd, the standalone) restarts it."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children: dict[int, int | None] = {}  # pid -> exit status once it exited
    try:
        for _ in range(workers):
            children[_fork(serve_one)] = None
        signal.signal(signal.SIGHUP, lambda *_: _tell(children, signal.SIGHUP))
        return _watch(children, stop)
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_all(children)


def _fork(serve_one: Callable[[], int]) -> int:
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        dies_with(parent)()
        code = serve_one()
    except BaseException:
        log.exception("API process %s failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


def _reap(children: dict[int, int | None]) -> None:
    for pid, status in children.items():
        if status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                children[pid] = os.waitstatus_to_exitcode(raw)


def _watch(children: dict[int, int | None], stop: threading.Event) -> int:
    while not stop.wait(0.5):
        _reap(children)
        for pid, status in children.items():
            if status is not None:
                log.error("API process %s exited (%s); stopping the others", pid, status)
                return 1
    return 0


def _tell(children: dict[int, int | None], sig: signal.Signals) -> None:
    for pid, status in children.items():
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _stop_all(children: dict[int, int | None]) -> None:
    _reap(children)
    _tell(children, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and None in children.values():
        time.sleep(0.1)
        _reap(children)
    _tell(children, signal.SIGKILL)
    for pid, status in children.items():
        if status is None:
            os.waitpid(pid, 0)


def _config(app: Any, listener: Listener, trusted_proxies: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=listener.host,
        port=listener.port,
        log_level="info",
        access_log=False,
        # uvicorn's lines go through the handler `regscan` set up (the configured
        # format, secrets masked) instead of its own.
        log_config=None,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies or None,
        ssl_certfile=listener.cert_file or None,
        ssl_keyfile=listener.key_file or None,
    )


async def _serve_all(
    servers: list[_Server], listeners: list[Listener], sockets: Sequence[socket.socket] | None
) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, _reload, servers, listeners)
    if sockets is None:
        await asyncio.gather(*(server.serve() for server in servers))
    else:
        pairs = zip(servers, sockets, strict=True)
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in pairs))


def _reload(servers: list[_Server], listeners: list[Listener]) -> None:
    """Load each TLS listener's certificate and key again into its live context. A pair
    that does not load (a half-written renewal) leaves the current one in service."""
    for server, listener in zip(servers, listeners, strict=True):
        context = server.config.ssl
        if not listener.tls or context is None:
            continue
        try:
            check_certificate(listener.cert_file, listener.key_file)
            context.load_cert_chain(listener.cert_file, listener.key_file)
        except (ssl.SSLError, OSError) as exc:
            log.error("TLS certificate not reloaded, the current one stays: %s", exc)
            continue
        log.info("TLS certificate reloaded from %s", listener.cert_file)
