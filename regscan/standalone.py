"""``regscan standalone``: the whole service on one machine, on embedded defaults.

Migrates a SQLite file in the working directory, starts a redis-server of its own on
a free loopback port (append-only, its files in ``.regscan/redis``), then the API, a
scheduler and two workers (one for regular scans and re-matching, one for on-demand
scans, so a sweep never delays an on-demand scan), prints where to reach them, and
stops everything cleanly on Ctrl-C, SIGTERM or SIGHUP. Its children also stop by
themselves if it dies without stopping them.

The API answers plain HTTP and HTTPS. Unless a certificate is configured, HTTPS uses a
self-signed one made on first start beside the key file (``regscan-tls.crt`` and
``regscan-tls.key``), whose SHA-256 fingerprint is printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from core.secrets import load_or_create_key_file
from core.settings import Settings
from regscan import certificate
from regscan.db import upgrade
from regscan.processes import dies_with

STARTUP_SECONDS = 30.0


# Asked to stop: Ctrl-C, SIGTERM, or SIGHUP (the terminal running us was closed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stop_asked = threading.Event()


class _Stopping(Exception):
    """A stop was asked for while the services were starting."""


def run(
    settings: Settings, *, api_port: int | None, tls_port: int | None, redis_url: str | None
) -> int:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    env = dict(os.environ)
    env["REGSCAN_DATABASE_URL"] = settings.database_url
    password = _admin_password(settings, env)
    key_file = _secret_key(settings, env)
    tls = _tls_files(settings, env)
    upgrade(settings.database_url)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if redis_url is None:
            redis_proc, redis_url = _start_redis(_state_dir(settings.database_url))
            children.append(redis_proc)
        env["REGSCAN_REDIS_URL"] = redis_url
        ports = (api_port or settings.api_port, tls_port or settings.api_tls_port)
        base = f"http://{settings.api_host}:{ports[0]}"
        children += _start_services(env, settings.api_host, ports)
        _wait_for(f"{base}/api/v1/_ping", children)
        https = f"https://{settings.api_host}:{ports[1]}"
        _announce(base, settings, password, redis_url, key_file, (https, tls))
        return _supervise(children)
    except _Stopping:
        return 0
    finally:
        if _stop_asked.is_set():
            print("stopping regscan ...", flush=True)
        _stop(children)


def _on_stop_signal(_signum: int, _frame: object) -> None:
    _stop_asked.set()


def _admin_password(settings: Settings, env: dict[str, str]) -> str | None:
    """Standalone is the one mode with a generated password; other modes require one."""
    if settings.admin_password is not None:
        return None
    password = secrets.token_urlsafe(12)
    env["REGSCAN_ADMIN_PASSWORD"] = password
    return password


def _secret_key(settings: Settings, env: dict[str, str]) -> Path | None:
    """A configured key wins; otherwise one kept next to the database, reused on every run.

    Unlike the admin password the key must survive restarts: stored credentials are
    encrypted under it.
    """
    if settings.secret_key is not None:
        return None
    path = key_file_path(settings.database_url)
    env["REGSCAN_SECRET_KEY"] = load_or_create_key_file(path)
    return path


def _tls_files(settings: Settings, env: dict[str, str]) -> certificate.TlsFiles:
    """A configured certificate wins; otherwise the standalone's own, made once and kept
    beside the key file so that clients who pinned it keep trusting it."""
    if settings.serves_tls:
        return certificate.TlsFiles(Path(settings.tls_cert_file), Path(settings.tls_key_file))
    files = certificate.load_or_create(key_file_path(settings.database_url).parent)
    env["REGSCAN_TLS_CERT_FILE"] = str(files.cert_file)
    env["REGSCAN_TLS_KEY_FILE"] = str(files.key_file)
    return files


def key_file_path(database_url: str) -> Path:
    """``regscan.key`` in the SQLite database's directory, else in the working directory."""
    if database_url.startswith("sqlite:///"):
        database = database_url.removeprefix("sqlite:///").partition("?")[0]
        if database and database != ":memory:":
            return Path(database).resolve().parent / "regscan.key"
    return Path.cwd() / "regscan.key"


def _state_dir(database_url: str) -> Path:
    """``.regscan/`` beside the SQLite database (else in the working directory): where
    the standalone's Redis keeps its append-only file, so queued work survives a restart."""
    return key_file_path(database_url).parent / ".regscan"


def _start_redis(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server was not found on PATH: install it (apt-get install redis-server) "
            "or pass --redis-url"
        )
    port = _free_port()
    workdir = state / "redis"
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "yes", "--dir", str(workdir), "--logfile", f"{workdir}/redis.log"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, preexec_fn=dies_with())
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_port(port, [proc])
    return proc, url


def _start_services(
    env: dict[str, str], host: str, ports: tuple[int, int]
) -> list[subprocess.Popen[bytes]]:
    me = [sys.executable, "-m", "regscan.cli"]
    api = [*me, "api", "--host", host, "--port", str(ports[0]), "--tls-port", str(ports[1])]
    return [
        _spawn(api, env),
        # Re-matching after a data change reads only the database: the sweep's worker has room.
        _spawn([*me, "worker", "--queues", "regular,images,rematch", "--name", "regular@%h"], env),
        # Callbacks wait on other teams' servers, never on a sweep.
        _spawn([*me, "worker", "--queues", "ondemand,callbacks", "--name", "ondemand@%h"], env),
        _spawn([*me, "scheduler"], env),
    ]


def _spawn(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of their own: Ctrl-C reaches only us, and we stop them in order.
    return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=dies_with())


def _announce(
    base: str,
    settings: Settings,
    password: str | None,
    redis_url: str,
    key_file: Path | None,
    tls: tuple[str, certificate.TlsFiles],
) -> None:
    shown = password if password is not None else "(from REGSCAN_ADMIN_PASSWORD)"
    key = (
        f"{key_file} (keep it: stored credentials need it)"
        if key_file
        else "(from REGSCAN_SECRET_KEY)"
    )
    print(
        "\nregscan is running\n"
        f"  API:       {base}/api/v1\n"
        f"  HTTPS:     {tls[0]}/api/v1 (curl -k, or trust {tls[1].cert_file})\n"
        f"  SHA-256:   {tls[1].fingerprint}\n"
        f"  user:      {settings.admin_user}\n"
        f"  password:  {shown}\n"
        f"  database:  {settings.database_url}\n"
        f"  redis:     {redis_url}\n"
        f"  key:       {key}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


def _supervise(children: list[subprocess.Popen[bytes]]) -> int:
    while not _stop_asked.wait(0.5):
        for child in children:
            if child.poll() is not None:
                print(f"regscan: {_command(child)} exited ({child.returncode}); stopping")
                return 1
    return 0


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    # Services first, Redis last, so workers can hand back their messages.
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        _fail_if_exited(procs)
        if _stop_asked.is_set():
            raise _Stopping
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {STARTUP_SECONDS:g}s")


def _wait_for(url: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        _fail_if_exited(procs)
        if _stop_asked.is_set():
            raise _Stopping
        try:
            with urlopen(url, timeout=1):
                return
        except (URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {STARTUP_SECONDS:g}s")


def _fail_if_exited(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{_command(proc)} exited with {proc.returncode}")


def _command(proc: subprocess.Popen[bytes]) -> str:
    """What a child runs, as a line to print (``regscan.cli api --port 8080``)."""
    args = proc.args if isinstance(proc.args, list | tuple) else [proc.args]
    return " ".join(str(a) for a in args[1:])
