"""The ``regscan`` command: api, worker, db, vulndb, standalone."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from core.settings import Settings, get_settings
from core.tasks import QUEUES as QUEUE_NAMES

if TYPE_CHECKING:
    from regscan.serve import Listener


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # What regscan writes (a SQLite database and its journal, the key file, the
    # standalone's Redis files) is for the service's user alone.
    os.umask(0o077)
    try:
        return args.func(args, get_settings())
    except CliError as exc:
        print(f"regscan: {exc}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


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


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import create_app
    from regscan.serve import serve

    _require_schema(settings)
    listeners = _listeners(args, settings)
    try:
        app = create_app(settings)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    serve(app, listeners)
    return 0


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
    if args.name:
        argv += ["--hostname", args.name]
    app.worker_main(argv)
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
