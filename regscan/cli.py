"""The ``regscan`` command: the services (api, worker, scheduler, standalone), the
schema and vulnerability data (db, vulndb), probes (worker-check), and the client
commands of :mod:`regscan.client` (login, scan, stop, jobs, status, results)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from core import logs
from core.settings import MAX_API_WORKERS, Settings, get_settings
from core.tasks import QUEUES as QUEUE_NAMES
from regscan.client import commands as client_commands
from regscan.client.api import ClientError
from regscan.errors import CliError

if TYPE_CHECKING:
    from regscan.serve import Listener


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # What regscan writes (a SQLite database and its journal, the key file, the
    # standalone's Redis files, the client's login) is for the service's user alone.
    os.umask(0o077)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"regscan: invalid configuration: {_first_problem(exc)}", file=sys.stderr)
        return 2
    logs.configure(settings)
    try:
        return args.func(args, settings)
    except (CliError, ClientError) as exc:
        print(f"regscan: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"REGSCAN_{where.upper()}: {first.get('msg', 'invalid')}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regscan", description="Registry image scanner")
    sub = p.add_subparsers(title="commands")

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", help="address to listen on (default: REGSCAN_API_HOST)")
    api.add_argument("--port", type=int, help="plain HTTP port (default: REGSCAN_API_PORT)")
    api.add_argument(
        "--tls-port",
        type=int,
        help="HTTPS port, served when REGSCAN_TLS_CERT_FILE and REGSCAN_TLS_KEY_FILE are set "
        "(default: REGSCAN_API_TLS_PORT)",
    )
    api.add_argument(
        "--workers",
        type=_api_workers,
        help="API processes sharing the ports (default: REGSCAN_API_WORKERS, the cores)",
    )
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--queues",
        default=",".join(QUEUE_NAMES),
        help="comma-separated: regular, images, ondemand, rematch, callbacks (default: all)",
    )
    worker.add_argument("--concurrency", type=int, default=4, help="threads (default: 4)")
    worker.add_argument("--name", default=None, help="worker node name (default: Celery's)")
    worker.set_defaults(func=cmd_worker)

    check = sub.add_parser(
        "worker-check",
        help="health check of a worker (a container probe): exit 0 if it answers a ping",
    )
    check.add_argument(
        "--name",
        default="celery@%h",
        help="the worker's node name as given to `regscan worker --name` (default: celery@%%h; "
        "%%h is this host's name)",
    )
    check.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    check.set_defaults(func=cmd_worker_check)

    sched = sub.add_parser("scheduler", help="fire the scheduled sweeps (run one or more)")
    sched.set_defaults(func=cmd_scheduler)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(title="db commands")
    db_sub.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(
        func=cmd_db_upgrade
    )

    vulndb = sub.add_parser("vulndb", help="vulnerability data (OSV)")
    vulndb_sub = vulndb.add_subparsers(title="vulndb commands")
    imp = vulndb_sub.add_parser("import", help="import OSV records and re-match stored images")
    imp.add_argument("location", help="a JSON file, a folder, a zip (osv.dev all.zip) or a URL")
    imp.set_defaults(func=cmd_vulndb_import)

    sa = sub.add_parser("standalone", help="everything on one machine: SQLite, own Redis")
    sa.add_argument("--port", type=int, default=None, help="API HTTP port (default: 8080)")
    sa.add_argument("--tls-port", type=int, default=None, help="API HTTPS port (default: 8443)")
    sa.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    sa.set_defaults(func=cmd_standalone)

    client_commands.add_commands(sub)
    return p


def _require_schema(settings: Settings) -> None:
    from regscan.db import pending_migrations

    if pending_migrations(settings.database_url):
        raise CliError(
            f"the database at {settings.database_url} is not at the newest schema: "
            "run `regscan db upgrade` first"
        )


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    from regscan.db import upgrade

    upgrade(settings.database_url)
    print(f"database at {settings.database_url} is up to date")
    return 0


def _api_workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_API_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {MAX_API_WORKERS}")
    return value


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    _require_schema(settings)
    listeners = _listeners(args, settings)
    workers = args.workers or settings.api_workers
    if workers == 1:
        return _serve_api(settings, listeners, None)
    return _run_api_workers(settings, listeners, workers)


def _serve_api(
    settings: Settings,
    listeners: list[Listener],
    sockets: list[socket.socket] | None,
    *,
    prepared: bool = False,
) -> int:
    from api.app import create_app
    from regscan.db import newest_revision
    from regscan.serve import serve

    try:
        app = create_app(settings, schema_head=newest_revision(), prepared=prepared)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    serve(app, listeners, trusted_proxies=settings.trusted_proxies.strip(), sockets=sockets)
    return 0


def _run_api_workers(settings: Settings, listeners: list[Listener], workers: int) -> int:
    """Check the database once, bind the ports here, then run ``workers`` API processes
    on them."""
    from api.app import prepare
    from regscan.serve import bind, run_workers

    try:
        prepare(settings)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    try:
        sockets = [bind(listener) for listener in listeners]
    except OSError as exc:
        raise CliError(str(exc)) from None
    served = ", ".join(f"{'https' if li.tls else 'http'}://{li.host}:{li.port}" for li in listeners)
    logging.getLogger("regscan.api").info("%d API processes serving %s", workers, served)
    try:
        return run_workers(lambda: _serve_api(settings, listeners, sockets, prepared=True), workers)
    finally:
        for sock in sockets:
            sock.close()


def _listeners(args: argparse.Namespace, settings: Settings) -> list[Listener]:
    """Plain HTTP always (for a TLS-terminating proxy, or curl on the machine), and
    HTTPS beside it when a certificate and key are configured."""
    from regscan.serve import Listener, check_certificate

    host = args.host or settings.api_host
    listeners = [Listener(host, args.port or settings.api_port)]
    if settings.tls_cert_file or settings.tls_key_file:
        if not settings.serves_tls:
            raise CliError("set both REGSCAN_TLS_CERT_FILE and REGSCAN_TLS_KEY_FILE, or neither")
        try:
            check_certificate(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot serve HTTPS with {settings.tls_cert_file}: {exc}") from None
        port = args.tls_port or settings.api_tls_port
        listeners.append(Listener(host, port, settings.tls_cert_file, settings.tls_key_file))
    return listeners


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    names = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUE_NAMES]
    if unknown or not names:
        raise CliError(
            f"unknown queue(s) {', '.join(unknown) or '(none)'}: choose from "
            + ", ".join(QUEUE_NAMES)
        )
    _require_schema(settings)
    from worker.app import app

    argv = ["worker", "--pool", "threads", "--concurrency", str(args.concurrency)]
    argv += ["--queues", ",".join(QUEUE_NAMES[q] for q in names), "--loglevel", "INFO"]
    argv += ["--without-gossip", "--without-mingle"]
    if settings.log_format == "json":
        _celery_says_json()
        argv.insert(0, "--quiet")  # Celery's start-up banner is not a JSON line
    if args.name:
        argv += ["--hostname", args.name]
    app.worker_main(argv)
    return 0


def _celery_says_json() -> None:
    """Celery prints a line from its signal handlers ("worker: Warm shutdown") with its
    own lock-free ``safe_say``; have that line be JSON like every other."""
    import celery.apps.worker

    celery.apps.worker.safe_say = logs.say_as_json


def cmd_worker_check(args: argparse.Namespace, settings: Settings) -> int:
    from regscan.probe import check_worker

    print(check_worker(settings, args.name, args.timeout))
    return 0


def cmd_vulndb_import(args: argparse.Namespace, settings: Settings) -> int:
    from regscan.vulndb import run_import
    from scanner.vulns.osv import SourceUnavailable

    _require_schema(settings)
    try:
        return run_import(settings, args.location)
    except SourceUnavailable as exc:
        raise CliError(str(exc)) from None


def cmd_scheduler(_args: argparse.Namespace, settings: Settings) -> int:
    from scheduler.clock import run_clock

    _require_schema(settings)
    return run_clock(settings)


def cmd_standalone(args: argparse.Namespace, settings: Settings) -> int:
    from regscan.standalone import run

    try:
        return run(settings, api_port=args.port, tls_port=args.tls_port, redis_url=args.redis_url)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


if __name__ == "__main__":
    sys.exit(main())
