"""Exports of stored results: CSV for spreadsheets, CycloneDX for SBOM tooling.

Both read only what scans stored; nothing here contacts a registry.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.vulnerability import (
    BomTarget,
    Vulnerability,
    VulnerabilityRating,
    VulnerabilityScoreSource,
    VulnerabilitySeverity,
)
from cyclonedx.output.json import JsonV1Dot6
from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from packageurl import PackageURL

from api.deps import Filter, State, User
from api.errors import ApiError
from models import Finding, Image, ScanResult, findings, results
from models.results import ResultFilter

router = APIRouter()
PAGE = 500

CSV_COLUMNS = [
    "Registry", "Repository", "Tag", "Digest", "Platform", "Id", "Distro", "Scan time",
    "Error", "CVE", "Severity", "CVSS", "Package", "Package version", "Package type",
    "Status", "Published", "Fix date", "Link",
]  # fmt: skip


@router.get("/registry/download")
def download(_user: User, state: State, flt: Filter) -> StreamingResponse:
    """One CSV row per image and finding (an image without findings gets one row)."""
    headers = {
        "Content-Disposition": 'attachment; filename="registry-scan-results.csv"',
        # Exactly "text/csv", as the reference sends: the Prisma Cloud SDK's download
        # helpers compare the media type whole. Given as media_type, Starlette would add
        # "; charset=utf-8" (the text is UTF-8 all the same).
        "Content-Type": "text/csv",
    }
    return StreamingResponse(_csv_rows(state, flt), headers=headers)


def _csv_rows(state: State, flt: ResultFilter) -> Iterator[str]:
    yield _csv_line(CSV_COLUMNS)
    offset = 0
    while True:
        with state.sessions() as session:
            rows, _total = results.latest_results(
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
    csv.writer(buf).writerow(cells)
    return buf.getvalue()


@router.get("/registry/cyclonedx")
def cyclonedx(_user: User, state: State, flt: Filter, platform: str | None = None) -> Response:
    """A CycloneDX 1.6 JSON document of one image: its packages and vulnerabilities."""
    with state.sessions() as session:
        rows, _total = results.latest_results(
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


def sbom(result: ScanResult, image: Image, found: list[Finding]) -> Bom:
    bom = Bom()
    bom.metadata.component = Component(
        type=ComponentType.CONTAINER,
        name=f"{result.registry_host}/{result.repository}",
        version=result.tag or image.digest,
        bom_ref=image.digest,
    )
    components: dict[tuple[str, str], list[Component]] = {}
    for n, p in enumerate(image.packages):
        component = Component(
            type=ComponentType.LIBRARY,
            name=p["name"],
            version=p["version"],
            purl=purl(p, image.os_distro),
            bom_ref=f"pkg-{n}",
        )
        components.setdefault((p["type"], p["name"]), []).append(component)
        bom.components.add(component)
    for f in found:
        # OS findings name the source package; the components are its binaries.
        names = f.detail.get("binaryPkgs") or [f.package_name]
        affected = [c for name in names for c in components.get((f.package_type, name), [])]
        _add_vulnerability(bom, f, affected)
    return bom


def _add_vulnerability(bom: Bom, f: Finding, affected: list[Component]) -> None:
    ratings = []
    if f.cvss is not None or f.severity:
        ratings.append(
            VulnerabilityRating(
                score=Decimal(str(f.cvss)) if f.cvss is not None else None,
                severity=_severity(f.severity),
                method=VulnerabilityScoreSource.CVSS_V3 if f.detail.get("vecStr") else None,
                vector=f.detail.get("vecStr") or None,
            )
        )
    affects = [BomTarget(ref=str(c.bom_ref.value)) for c in affected]
    bom.vulnerabilities.add(
        Vulnerability(
            id=f.vuln_id,
            bom_ref=f"{f.vuln_id}/{f.package_name}/{f.package_version}",
            description=f.detail.get("description") or None,
            ratings=ratings,
            affects=affects,
        )
    )


def _severity(name: str) -> VulnerabilitySeverity:
    try:
        return VulnerabilitySeverity(name.lower())
    except ValueError:
        return VulnerabilitySeverity.UNKNOWN


# purl types of OS packages, by the database they were found in
_OS_PURL = (("var/lib/dpkg", "deb"), ("lib/apk", "apk"), ("rpm", "rpm"))
_LANG_PURL = {"python": "pypi", "nodejs": "npm", "go": "golang", "jar": "maven"}


def purl(p: dict[str, Any], distro: str) -> PackageURL:
    """The package URL of an inventory entry (https://github.com/package-url/purl-spec)."""
    if p["type"] == "package":
        kind = next(
            (t for prefix, t in _OS_PURL if p["path"].startswith(prefix) or prefix in p["path"]),
            "generic",
        )
        return PackageURL(kind, distro or None, p["name"], p["version"])
    kind = _LANG_PURL.get(p["type"], "generic")
    namespace, _, name = p["name"].rpartition(":" if kind == "maven" else "/")
    return PackageURL(kind, namespace or None, name, p["version"])
