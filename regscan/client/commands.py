"""The client commands of ``regscan``: login, logout, scan, stop, jobs, status, results.

Each talks to a regscan running elsewhere (``--url``, ``REGSCAN_URL``, else the saved
login's, else http://127.0.0.1:8080) as the user of ``--token``/``REGSCAN_TOKEN``,
``--user``/``REGSCAN_USER`` with ``REGSCAN_PASSWORD`` (asked for when missing), or the
saved login. Every failure is one line on stderr and exit status 1; ``--exit-code N``
makes findings at or above ``--severity`` exit N, for CI gating.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from regscan.client import follow, render
from regscan.client.api import DEFAULT_URL, Client, ClientError, Credentials, base_url
from regscan.client.config import Login, forget_login, load_login, login_file, save_login

Handler = Callable[[argparse.Namespace], int]
FORMATS = ("table", "json", "csv", "cyclonedx")
MIN_INTERVAL = 0.2  # seconds between polls: following a scan must not load the server


def add_commands(sub: Any) -> None:
    """Add the client commands to the ``regscan`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="regscan's address (default: REGSCAN_URL, the saved login)")
    common.add_argument("--token", help="an API token or session token (default: REGSCAN_TOKEN)")
    common.add_argument(
        "--user", help="log in as this user (default: REGSCAN_USER); password: REGSCAN_PASSWORD"
    )

    p = sub.add_parser("login", parents=[common], help="log in and keep a token (mode 0600)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _handle(p, cmd_login)
    _handle(sub.add_parser("logout", help="forget the saved login"), cmd_logout)

    p = sub.add_parser("scan", parents=[common], help="start a scan (all in scope, or IMAGE)")
    p.add_argument("image", nargs="?", help="REGISTRY/REPO[:TAG][@DIGEST]; none: everything")
    p.add_argument("--on-demand", action="store_true", help="an on-demand scan of IMAGE")
    p.add_argument("--queue", action="store_true", help="wait in line behind a running scan")
    p.add_argument("--wait", action="store_true", help="wait until the scan ends")
    p.add_argument("--follow", action="store_true", help="show its progress until it ends")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls (at least 0.2)"
    )
    _gate_options(p)
    _handle(p, cmd_scan)

    p = sub.add_parser("stop", parents=[common], help="stop the running regular scan")
    _handle(p, cmd_stop)

    p = sub.add_parser("jobs", parents=[common], help="list scan jobs, newest first")
    kinds = ("regular-all", "regular-image", "regular-select", "on-demand")
    p.add_argument("--kind", choices=kinds)
    p.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 250)")
    _handle(p, cmd_jobs)

    _handle(
        sub.add_parser("status", parents=[common], help="the regular scan, schedule and data"),
        cmd_status,
    )

    p = sub.add_parser("results", parents=[common], help="findings of an image, a CVE, a package")
    p.add_argument("image", nargs="?", help="REGISTRY/REPO[:TAG]")
    p.add_argument("--cve", help="every current image affected by this vulnerability")
    p.add_argument("--package", help="every current image holding this package")
    p.add_argument("--format", choices=FORMATS, default="table")
    _gate_options(p)
    _handle(p, cmd_results)


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--severity",
        help="only findings at or above: critical, high, medium, low, unknown (default: all)",
    )
    p.add_argument(
        "--exit-code", type=int, help="exit with this code when findings at or above --severity"
    )


def _handle(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """Run ``handler``; anything it did not expect is one line too, never a traceback."""

    def run(args: argparse.Namespace, _settings: object) -> int:
        try:
            return handler(args)
        except (ClientError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("REGSCAN_DEBUG"):
                raise
            raise ClientError(
                f"unexpected {type(exc).__name__}: {exc} (REGSCAN_DEBUG=1 shows where)"
            ) from None

    parser.set_defaults(func=run)


# -- connecting ---------------------------------------------------------------------------


def connect(args: argparse.Namespace) -> Client:
    saved = load_login()
    url = args.url or os.environ.get("REGSCAN_URL") or (saved.url if saved else DEFAULT_URL)
    token = args.token or os.environ.get("REGSCAN_TOKEN")
    user = args.user or os.environ.get("REGSCAN_USER")
    if token:
        return Client(url, Credentials(token=token))
    if user:
        return Client(url, Credentials(user=user, password=_password(user)))
    if saved and base_url(saved.url) == base_url(url):
        return Client(url, Credentials(token=saved.token), saved=True)
    return Client(url, Credentials())


def _password(user: str, from_stdin: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password = os.environ.get("REGSCAN_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise ClientError(f"no password for {user}: set REGSCAN_PASSWORD or use --password-stdin")
    return getpass.getpass(f"password for {user}: ")


# -- login --------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    url = base_url(args.url or os.environ.get("REGSCAN_URL") or DEFAULT_URL)
    token = args.token or os.environ.get("REGSCAN_TOKEN")
    user = args.user or os.environ.get("REGSCAN_USER") or ""
    if not token:
        if not user:
            raise ClientError("give --user NAME (to log in with a password) or --token TOKEN")
        password = _password(user, args.password_stdin)
        answer = Client(url, Credentials()).post(
            "/authenticate", {"username": user, "password": password}
        )
        token = str(answer["token"])
    Client(url, Credentials(token=token)).get("/registry/scans", limit=1)  # the token works
    path = save_login(Login(url=url, token=token, user=user))
    print(f"logged in to {url}{' as ' + user if user else ''}; token kept in {path}")
    return 0


def cmd_logout(_args: argparse.Namespace) -> int:
    print("logged out" if forget_login() else f"not logged in (no {login_file()})")
    return 0


# -- scans --------------------------------------------------------------------------------


def parse_image(text: str) -> dict[str, str]:
    """``REGISTRY/REPO[:TAG][@DIGEST]`` as the API's ``tag`` object."""
    name, _, digest = text.partition("@")
    registry, slash, rest = name.partition("/")
    if not slash or not rest or not registry:
        raise ClientError(
            f"{text!r} is not a full image name: use REGISTRY/REPO[:TAG], "
            "e.g. registry.example.com/team/app:1.0"
        )
    repo, tag = rest, ""
    if ":" in rest.rsplit("/", 1)[-1]:
        repo, tag = rest.rsplit(":", 1)
    return {"registry": registry, "repo": repo, "tag": tag, "digest": digest}


def cmd_scan(args: argparse.Namespace) -> int:
    threshold = render.parse_severity(args.severity) if args.severity else "unknown"
    if not args.image and (args.on_demand or args.exit_code is not None):
        raise ClientError("--on-demand and --exit-code need an IMAGE to scan")
    client = connect(args)
    body: dict[str, Any] | None = None
    if args.image:
        body = {"tag": parse_image(args.image)}
        if args.on_demand:
            body["onDemandScan"] = True
    job = client.post("/registry/scan", body, wait="true" if args.queue else None)
    kind = "on-demand" if args.on_demand else "regular"
    what = job.get("name") or "every image in scope"
    print(f"{kind} scan {job['id']} of {what}: {job['status']}")
    if not (args.wait or args.follow or args.exit_code is not None):
        return 0
    follower = follow.Follower(client, int(job["id"]), max(args.interval, MIN_INTERVAL))
    if args.follow and sys.stdout.isatty():
        job = follow.follow_live(follower, Console())
    elif args.follow:
        job = follow.follow_plain(follower, sys.stdout)
    else:
        job = follow.wait_quietly(follower, sys.stdout)
    if job["status"] == "failed":
        raise ClientError(f"scan {job['id']} failed: {_first_line(job.get('error'))}")
    if args.exit_code is not None:
        return _gate(client, args.image, threshold, args.exit_code)
    return 0


def _gate(client: Client, image: str, threshold: str, code: int) -> int:
    results = client.get("/registry", name=_result_name(image))
    found = [f for r in results for f in r.get("vulnerabilities") or []]
    return _verdict([f for f in found if render.at_least(f, threshold)], threshold, code)


def _verdict(found: list[dict[str, Any]], threshold: str, code: int) -> int:
    counted = render.counts(found)
    summary = ", ".join(f"{counted[s]} {s}" for s in render.SEVERITIES if counted[s])
    if found:
        print(
            f"{len(found)} findings at or above {threshold} ({summary}): exit code {code}",
            file=sys.stderr,
        )
        return code
    print(f"no findings at or above {threshold}", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    answer = connect(args).post("/registry/stop")
    print(answer.get("message") or "stop asked")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = connect(args).get("/registry/scans", kind=args.kind, limit=max(1, min(args.limit, 250)))
    table = Table()
    for column in ("ID", "Kind", "Status", "What", "Asked by", "Images", "Failed", "Created"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        counts = job.get("counts") or {}
        done = sum(int(counts.get(k, 0)) for k in ("scanned", "failed", "skipped"))
        table.add_row(
            str(job["id"]),
            job["kind"],
            Text(job["status"], style=follow.STATUS_STYLE.get(job["status"], "")),
            job.get("name") or "every image in scope",
            job.get("requestedBy") or "",
            f"{done}/{counts.get('total', 0)}",
            str(counts.get("failed", 0)),
            (job.get("createdAt") or "")[:19].replace("T", " "),
        )
    Console().print(table)
    return 0


# -- status -------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    client = connect(args)
    console = Console()
    console.print(Text(f"regscan at {client.url}", style="bold"))
    latest = client.get("/statuses/registry")
    if latest.get("scanID") is None:
        console.print("regular scan: none has run yet")
    else:
        job = client.get(f"/registry/scans/{latest['scanID']}")
        console.print("regular " + follow.describe(follow.Snapshot.of(job)))
    schedule = client.get("/settings/scan")
    console.print(f"next scheduled sweep: {schedule.get('nextRunAt') or 'none (schedule off)'}")
    _print_vulndb(console, client.get("/vulndb"))
    return 0


def _print_vulndb(console: Console, data: dict[str, Any]) -> None:
    style = {"ok": "green", "failing": "red", "pending": "yellow"}.get(data.get("status", ""), "")
    line = Text("vulnerability data: ")
    line.append(str(data.get("status", "?")), style=style)
    line.append(
        f" ({data.get('mode', '?')}): {data.get('message', '')}; generation "
        f"{data.get('generation')}, last change {data.get('lastChange') or 'never'}"
    )
    console.print(line)
    for source in data.get("sources") or []:
        mark = Text(f"  {source.get('status', '?'):8} ", style="red" if source.get("error") else "")
        mark.append(f"{source['location']}  refreshed {source.get('lastRefresh') or 'never'}")
        if source.get("error"):
            mark.append(f"  {source['error']}", style="red")
        console.print(mark)


# -- results ------------------------------------------------------------------------------


def cmd_results(args: argparse.Namespace) -> int:
    chosen = [x for x in (args.image, args.cve, args.package) if x]
    if len(chosen) != 1:
        raise ClientError("give exactly one of IMAGE, --cve ID or --package NAME")
    threshold = render.parse_severity(args.severity) if args.severity else "unknown"
    client = connect(args)
    query = _query(args)
    if args.format == "csv":
        sys.stdout.write(client.get_text("/registry/download", **query))
        return 0
    if args.format == "cyclonedx":
        if not args.image:
            raise ClientError("--format cyclonedx describes one image: give IMAGE")
        sys.stdout.write(client.get_text("/registry/cyclonedx", **query) + "\n")
        return 0
    results = list(client.pages("/registry", **query))
    if args.image and not results:
        raise ClientError(
            f"no scan result for {args.image}: scan it with "
            f"`regscan scan {args.image} --on-demand --wait`"
        )
    found = _show(args, results, threshold)
    return _verdict(found, threshold, args.exit_code) if args.exit_code is not None else 0


def _query(args: argparse.Namespace) -> dict[str, str]:
    if args.cve:
        return {"cve": args.cve}
    if args.package:
        return {"package": args.package}
    query = {"name": _result_name(args.image)}
    digest = args.image.partition("@")[2]
    return {**query, "id": digest} if digest else query


def _result_name(image: str) -> str:
    ref = parse_image(image)
    return f"{ref['registry']}/{ref['repo']}" + (f":{ref['tag']}" if ref["tag"] else "")


def _show(args: argparse.Namespace, results: list[dict[str, Any]], threshold: str) -> list[dict]:
    if args.format == "json":
        for r in results:
            r["vulnerabilities"] = [
                f for f in r.get("vulnerabilities") or [] if render.at_least(f, threshold)
            ]
        print(json.dumps(results, indent=2))
        return [f for r in results for f in r["vulnerabilities"]]
    console = Console()
    if args.cve or args.package:
        found = (
            render.print_cve(console, args.cve, results)
            if args.cve
            else render.print_package(console, args.package, results)
        )
        return [f for f in found if render.at_least(f, threshold)]
    return [f for r in results for f in render.print_image(console, r, threshold)]


def _first_line(text: Any) -> str:
    return str(text or "no reason given").strip().splitlines()[0]
