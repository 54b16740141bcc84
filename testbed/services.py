"""Private, throw-away server processes for the tests.

Every server here is a real binary from ``PATH`` (``redis-server``) or from Debian's
``docker-registry`` package, started on a free port of 127.0.0.1 with its data in a
temporary directory that is removed again by :meth:`stop`.  Use them as context managers
or call ``start()`` / ``stop()`` yourself; a server still running when the interpreter
exits is stopped then.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests
import urllib3

REGISTRY_BINARY = "/usr/bin/docker-registry"
"""Debian's build of the CNCF distribution registry (``apt-get install docker-registry``)."""

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_URL_ENV = "REGSCAN_TEST_POSTGRES_URL"

_START_ATTEMPTS = 3


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_url() -> str | None:
    """Return the PostgreSQL URL the tests should use, or None when there is none.

    ``REGSCAN_TEST_POSTGRES_URL`` wins when set.  Otherwise the machine's own server at
    127.0.0.1:5432 (user ``postgres``, database ``test``) is used if it accepts a
    connection within two seconds.
    """
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError:
        return None
    try:
        import psycopg

        with psycopg.connect(DEFAULT_POSTGRES_URL, connect_timeout=2) as conn:
            conn.execute("select 1")
    except Exception:
        return None
    return DEFAULT_POSTGRES_URL


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@contextlib.contextmanager
def fresh_postgres_database(server: str, prefix: str) -> Iterator[str]:
    """A new database on the PostgreSQL at ``server`` (a URL), dropped again whatever
    happens; yields its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(server).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready in time."""


_running: set[_Process] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.stop()


class _Process:
    """A child process with a temporary directory, a log file and a readiness check."""

    name = "server"
    ready_timeout = 20.0

    def __init__(self, port: int | None = None) -> None:
        self.fixed_port = port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self.log_path: Path | None = None
        self._lock = threading.Lock()

    # -- to be provided by subclasses -------------------------------------------------
    def _command(self, port: int, tmpdir: Path) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Self:
        """Start the server and wait until it answers; return self."""
        with self._lock:
            if self.proc is not None:
                return self
            last_error = ""
            for _ in range(_START_ATTEMPTS):
                # free_port() can race with another process taking the port; a server
                # that dies at once is retried on a new port.
                self.tmpdir = Path(tempfile.mkdtemp(prefix=f"regscan-{self.name}-"))
                self.log_path = self.tmpdir / f"{self.name}.log"
                self.port = self.fixed_port or free_port()
                command = self._command(self.port, self.tmpdir)
                with open(self.log_path, "ab") as log:
                    self.proc = subprocess.Popen(
                        command,
                        cwd=self.tmpdir,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                _running.add(self)
                if self._wait_ready():
                    return self
                last_error = self.read_log()
                self._terminate()
            raise ServerStartError(
                f"{self.name} did not start after {_START_ATTEMPTS} attempts:\n{last_error}"
            )

    def stop(self) -> None:
        """Stop the server (terminate, then kill), reap it and remove its directory."""
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout=5)
        _running.discard(self)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self._is_ready():
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self.proc.pid if self.proc is not None else None

    def read_log(self) -> str:
        """The server's output so far (empty once stopped)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisServer(_Process):
    """A private ``redis-server`` on 127.0.0.1 that keeps nothing on disk.

    >>> with RedisServer() as redis_server:
    ...     client = redis.Redis.from_url(redis_server.url)

    ``port`` fixes the port, so that a test can stop it and start a new, empty one at
    the same address: what a restart without persistence does to its clients.
    """

    name = "redis"

    def __init__(self, binary: str = "redis-server", port: int | None = None) -> None:
        super().__init__(port)
        self.binary = binary

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self, port: int, tmpdir: Path) -> list[str]:
        return [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmpdir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


class RegistryServer(_Process):
    """A private CNCF distribution registry (2.8) with filesystem storage, no auth by default.

    Deleting manifests is enabled.  The registry's own log goes to :attr:`log_path`.
    ``notifications`` is rendered as ``notifications.endpoints`` of the registry's
    configuration, e.g. ``[{"name": "regscan", "url": "http://127.0.0.1:8080/hook",
    "timeout": "1s", "threshold": 3, "backoff": "1s"}]``.  With ``relative_urls`` the
    registry answers with relative ``Location`` headers.

    Authentication, one of: ``htpasswd`` (a bcrypt htpasswd file: ``auth.htpasswd``) or
    ``token_auth`` (``{"realm", "service", "issuer", "rootcertbundle"}``: ``auth.token``).
    ``storage_dir`` puts the storage root there instead of in the server's temporary
    directory (and leaves it in place on stop), so that several registries, say an open
    one to push through and a protected one, can serve the same images.
    ``redirect_blobs_to`` (a base URL) answers blob downloads with a redirect to that URL
    plus the blob's path under the storage root, as registries backed by object storage do.
    ``tls`` (a certificate file and its key file) serves HTTPS instead of plain HTTP.
    """

    name = "registry"

    def __init__(
        self,
        notifications: list[dict[str, Any]] | None = None,
        *,
        relative_urls: bool = False,
        binary: str = REGISTRY_BINARY,
        port: int | None = None,
        storage_dir: Path | None = None,
        htpasswd: Path | None = None,
        token_auth: dict[str, str] | None = None,
        redirect_blobs_to: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        if htpasswd is not None and token_auth is not None:
            raise ValueError("a registry takes one of htpasswd and token_auth, not both")
        super().__init__(port)
        self.notifications = notifications
        self.relative_urls = relative_urls
        self.storage_dir = storage_dir
        self.htpasswd = htpasswd
        self.token_auth = token_auth
        self.redirect_blobs_to = redirect_blobs_to
        self.tls = tls
        self.binary = binary
        self.config_path: Path | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as an image reference names the registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` when serving TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def config(self, port: int, storage_dir: Path) -> dict[str, Any]:
        """The registry configuration for a given port and storage directory."""
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text", "fields": {"service": "registry"}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                "secret": os.urandom(16).hex(),
                "relativeurls": self.relative_urls,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        if self.notifications:
            config["notifications"] = {"endpoints": self.notifications}
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "regscan-test", "path": str(self.htpasswd)}}
        if self.token_auth is not None:
            config["auth"] = {"token": dict(self.token_auth)}
        if self.tls is not None:
            config["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        if self.redirect_blobs_to is not None:
            redirect = {"name": "redirect", "options": {"baseurl": self.redirect_blobs_to}}
            config["middleware"] = {"storage": [redirect]}
        return config

    def _command(self, port: int, tmpdir: Path) -> list[str]:
        storage = self.storage_dir or tmpdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config_path = tmpdir / "config.yml"
        # JSON is valid YAML, so no YAML library is needed to write the configuration.
        self.config_path.write_text(json.dumps(self.config(port, storage), indent=2) + "\n")
        return [self.binary, "serve", str(self.config_path)]

    def _is_ready(self) -> bool:
        try:
            # Up is what matters here, not whom its certificate names.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                response = requests.get(f"{self.url}/v2/", timeout=1, verify=False)
        except requests.RequestException:
            return False
        # A protected registry answers its challenge once it is up.
        return response.status_code in (200, 401)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until ``host:port`` accepts TCP connections, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections in {timeout}s")
        time.sleep(0.05)


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 that a test may stop and start again,
    keeping its data: what a database restart or an outage does to its clients.

    The cluster is made with ``initdb`` from Debian's ``postgresql`` package in a
    temporary directory (owned by the ``postgres`` user when running as root, since the
    server refuses to run as root), with trust authentication and a database ``test``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="regscan-postgres-"))
        self.data = self.tmpdir / "data"
        self.log_path = self.tmpdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not binaries:
            raise ServerStartError("no PostgreSQL binaries under /usr/lib/postgresql")
        self.bin = binaries[-1]
        if os.geteuid() == 0:
            shutil.chown(self.tmpdir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/test"

    def start(self) -> Self:
        """Start the server on its port and wait until it accepts connections."""
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        command = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        command += ["-k", str(self.tmpdir), "-c", "listen_addresses=127.0.0.1", *options]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd="/tmp", **self._owner()
            )
        deadline = time.monotonic() + 30
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ServerStartError(f"postgres did not start:\n{self.log_path.read_text()}")
            time.sleep(0.1)
        self._ensure_database()
        return self

    def stop(self) -> None:
        """A fast shutdown: sessions are ended and the server exits; the data stays."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self) -> None:
        """Stop the server and delete the cluster."""
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        for _ in range(50):  # accepting TCP before it accepts sessions
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'test'")
                    if found.fetchone() is None:
                        conn.execute("CREATE DATABASE test")
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise ServerStartError(f"postgres took no session:\n{self.log_path.read_text()}")

    @staticmethod
    def _owner() -> dict[str, Any]:
        """Run as the postgres user when we are root (the server refuses root), so that
        the process we signal is the server itself."""
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        subprocess.run(command, check=True, capture_output=True, cwd="/tmp", **self._owner())
