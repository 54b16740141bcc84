"""Serving the API: plain HTTP, and HTTPS beside it when a certificate is configured.

Both listeners run in one process and one event loop, on the same application. The
process's signals are handled here rather than by each uvicorn server: SIGINT and
SIGTERM stop both, and SIGHUP reads the certificate and key again, so a renewed
certificate is served to new connections without a restart (connections already
open keep the certificate they started with).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

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


def serve(app: Any, listeners: list[Listener], trusted_proxies: str = "") -> None:
    """Serve ``app`` on every listener until SIGINT or SIGTERM. ``X-Forwarded-For`` is
    believed from ``trusted_proxies`` (comma-separated addresses) only: from anyone
    else, a guesser would name a new client address with every attempt."""
    servers = [_Server(_config(app, listener, trusted_proxies)) for listener in listeners]
    asyncio.run(_serve_all(servers, listeners))


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


async def _serve_all(servers: list[_Server], listeners: list[Listener]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.add_signal_handler(signal.SIGHUP, _reload, servers, listeners)
    await asyncio.gather(*(server.serve() for server in servers))


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
