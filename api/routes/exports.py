"""Exports of stored results: CSV for spreadsheets, CycloneDX for SBOM tooling.

Both read only what scans stored; nothing here contacts a registry.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from cyclonedx.output.json import JsonV1Dot6
from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from api.deps import Filter, State, User
from api.errors import ApiError
from api.sbom import sbom
from models import Finding, Image, ScanResult, findings, result_queries
from models.result_queries import ResultFilter

router = APIRouter()
PAGE = 500

CSV_COLUMNS = [
    "Registry", "Repository", "Tag", "Digest", "Platform", "Id", "Distro", "Scan time",
    "Error", "CVE", "Severity", "CVSS", "Package", "Package version", "Package type",
    "Status", "Published", "Fix date", "Link",
]  # fmt: skip


class CsvResponse(StreamingResponse):
    media_type = "text/csv"


class CycloneDxResponse(Response):
    media_type = "application/vnd.cyclonedx+json"


@router.get("/registry/download", response_class=CsvResponse)
def download(_user: User, state: State, flt: Filter) -> StreamingResponse:
    """One CSV row per image and finding (an image without findings gets one row)."""
    headers = {
        "Content-Disposition": 'attachment; filename="registry-scan-results.csv"',
        # Exactly "text/csv", as the reference sends: the Prisma Cloud SDK's download
        # helpers compare the media type whole. From media_type alone, Starlette would
        # add "; charset=utf-8" (the text is UTF-8 all the same).
        "Content-Type": "text/csv",
    }
    return CsvResponse(_csv_rows(state, flt), headers=headers)


def _csv_rows(state: State, flt: ResultFilter) -> Iterator[str]:
    yield _csv_line(CSV_COLUMNS)
    offset = 0
    while True:
        with state.sessions() as session:
            rows, _total = result_queries.latest_results(
                session, flt, offset=offset, limit=PAGE, sort=None, reverse=False
            )
            found = findings.findings_of(session, [i.id for _r, i in rows if i is not None])
            lines = [
                _csv_line(cells)
                for result, image in rows
                for cells in _csv_cells(result, image, found.get(image.id, []) if image else [])
            ]
        yield from lines
        if len(rows) < PAGE:
            return
        offset += PAGE


def _csv_cells(result: ScanResult, image: Image | None, found: list[Finding]) -> Iterator[list]:
    base = [
        result.registry_host,
        result.repository,
        result.tag,
        result.digest,
        result.platform,
        image.config_digest if image else "",
        image.distro if image else "",
        result.scanned_at.isoformat(),
        result.err,
    ]
    if not found:
        yield [*base, *[""] * 10]
    for f in found:
        d = f.detail
        yield [
            *base,
            f.vuln_id, f.severity, "" if f.cvss is None else f.cvss, f.package_name,
            f.package_version, f.package_type, d.get("status", ""), d.get("published", ""),
            d.get("fixDate", ""), d.get("link", ""),
        ]  # fmt: skip


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow([_inert(cell) for cell in cells])
    return buf.getvalue()


# What a spreadsheet reads as the start of a formula. Distro and package names come from
# the images themselves (an image's /etc/os-release is whatever its author wrote).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(cell: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading quote."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell


@router.get("/registry/cyclonedx", response_class=CycloneDxResponse)
def cyclonedx(_user: User, state: State, flt: Filter, platform: str | None = None) -> Response:
    """A CycloneDX 1.6 JSON document of one image: its packages and vulnerabilities."""
    with state.sessions() as session:
        rows, _total = result_queries.latest_results(
            session, flt, offset=0, limit=250, sort=None, reverse=False
        )
        images = [(r, i) for r, i in rows if i is not None]
        if platform is not None:
            images = [(r, i) for r, i in images if i.platform == platform]
        result, image = _one(images)
        found = findings.findings_of(session, [image.id]).get(image.id, [])
        document = JsonV1Dot6(sbom(result, image, found)).output_as_string(indent=2)
    return Response(document, media_type="application/vnd.cyclonedx+json; version=1.6")


def _one(images: list[tuple[ScanResult, Image]]) -> tuple[ScanResult, Image]:
    if not images:
        raise ApiError(404, "no scanned image matches: check name (REGISTRY/REPO:TAG) or id")
    names = {(r.registry_host, r.repository, r.tag, i.platform) for r, i in images}
    if len(names) > 1:
        choices = ", ".join(sorted(f"{h}/{repo}:{t} ({p})" for h, repo, t, p in names)[:10])
        raise ApiError(400, f"several images match ({choices}); narrow with name= and platform=")
    return images[0]
