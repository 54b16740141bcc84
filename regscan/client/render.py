"""Results for people: tables with severities coloured as Trivy colours them, fix
versions and counts; and the severity threshold that ``--severity`` and
``--exit-code`` use."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from regscan.client.api import ClientError

# Most severe first; "unknown" is a finding the data gives no severity.
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
STYLES = {
    "critical": "bold red",
    "high": "red",
    "medium": "yellow",
    "low": "blue",
    "unknown": "dim",
}


def parse_severity(text: str) -> str:
    """``high``, ``HIGH`` or Trivy's ``HIGH,CRITICAL`` (the least severe listed counts)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SEVERITIES]
    if not names or unknown:
        raise ClientError(
            f"unknown severity {text!r}: use one of {', '.join(SEVERITIES)} (or a comma list)"
        )
    return max(names, key=SEVERITIES.index)


def severity_of(finding: dict[str, Any]) -> str:
    value = str(finding.get("severity") or "").lower()
    return value if value in SEVERITIES else "unknown"


def at_least(finding: dict[str, Any], threshold: str) -> bool:
    return SEVERITIES.index(severity_of(finding)) <= SEVERITIES.index(threshold)


def fixed_version(finding: dict[str, Any]) -> str:
    status = str(finding.get("status") or "")
    return status.removeprefix("fixed in ") if status.startswith("fixed in ") else ""


def counts(findings: Iterable[dict[str, Any]]) -> Counter[str]:
    return Counter(severity_of(f) for f in findings)


def counts_line(found: Counter[str]) -> Text:
    """``Total: 5 (CRITICAL: 1, HIGH: 2, MEDIUM: 1, LOW: 1, UNKNOWN: 0)``, coloured."""
    line = Text(f"Total: {sum(found.values())} (")
    for n, name in enumerate(SEVERITIES):
        if n:
            line.append(", ")
        line.append(f"{name.upper()}: {found[name]}", style=STYLES[name])
    line.append(")")
    return line


def image_name(result: dict[str, Any]) -> str:
    tag = result.get("repoTag") or {}
    name = f"{tag.get('registry', '')}/{tag.get('repo', '')}"
    if tag.get("tag"):
        name += f":{tag['tag']}"
    return name


def _severity_cell(finding: dict[str, Any]) -> Text:
    name = severity_of(finding)
    return Text(name.upper(), style=STYLES[name])


def print_image(console: Console, result: dict[str, Any], threshold: str) -> list[dict[str, Any]]:
    """One scanned platform image: its findings at or above ``threshold``, a table of
    them and the counts. Returns the findings shown."""
    distro = " ".join(x for x in (result.get("osDistro"), result.get("osDistroVersion")) if x)
    header = Text(image_name(result), style="bold")
    for extra in (result.get("platform"), distro, f"scanned {result.get('scanTime') or '-'}"):
        if extra:
            header.append(f"  {extra}", style="dim")
    console.print(header)
    if result.get("err"):
        console.print(Text(f"scan failed: {result['err']}", style="red"))
        return []
    shown = [f for f in result.get("vulnerabilities") or [] if at_least(f, threshold)]
    console.print(counts_line(counts(shown)))
    if shown:
        table = Table(show_lines=False)
        for column in ("Package", "Version", "Vulnerability", "Severity", "Fixed in", "Title"):
            table.add_column(column, overflow="fold")
        for f in shown:
            table.add_row(
                str(f.get("packageName", "")),
                str(f.get("packageVersion", "")),
                str(f.get("cve", "")),
                _severity_cell(f),
                fixed_version(f) or Text(str(f.get("status") or ""), style="dim"),
                str(f.get("title") or "")[:80],
            )
        console.print(table)
    console.print()
    return shown


def print_cve(console: Console, vuln_id: str, results: list[dict[str, Any]]) -> list[dict]:
    """Every current image affected by one vulnerability, with the package concerned."""
    wanted = vuln_id.upper()
    table = Table(title=f"{wanted}: {len(results)} affected images")
    for column in ("Image", "Platform", "Package", "Version", "Severity", "Fixed in"):
        table.add_column(column, overflow="fold")
    found = []
    for result in results:
        for f in result.get("vulnerabilities") or []:
            if str(f.get("cve", "")).upper() != wanted:
                continue
            found.append(f)
            table.add_row(
                image_name(result),
                str(result.get("platform") or ""),
                str(f.get("packageName", "")),
                str(f.get("packageVersion", "")),
                _severity_cell(f),
                fixed_version(f),
            )
    console.print(table)
    return found


def print_package(console: Console, name: str, results: list[dict[str, Any]]) -> list[dict]:
    """Every current image holding a package, with its versions and their findings."""
    table = Table(title=f"{name}: held by {len(results)} images")
    for column in ("Image", "Platform", "Versions", "Findings"):
        table.add_column(column, overflow="fold")
    found = []
    for result in results:
        versions = sorted(
            {
                str(p.get("version", ""))
                for group in result.get("packages") or []
                for p in group.get("pkgs") or []
                if name in (p.get("name"), p.get("sourceName"))
            }
        )
        mine = [
            f
            for f in result.get("vulnerabilities") or []
            if name in (f.get("packageName"), *(f.get("binaryPkgs") or []))
        ]
        found += mine
        table.add_row(
            image_name(result),
            str(result.get("platform") or ""),
            ", ".join(versions),
            counts_line(counts(mine)),
        )
    console.print(table)
    return found
