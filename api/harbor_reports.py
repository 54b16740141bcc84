"""What regscan tells Harbor as its pluggable scanner (goharbor/pluggable-scanner-spec,
API v1.2): its metadata, and the reports of a finished scan, the vulnerability report
(version 1.1) and the CycloneDX SBOM, made from what the scan stored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cyclonedx.output.json import JsonV1Dot6

from api.sbom import sbom
from core.views import ts
from models import Finding, Image, ScanResult

SCANNER = {"name": "regscan", "vendor": "regscan", "version": "0.1.0"}

# What Harbor hands over: single-platform image manifests (an index's children are
# scanned one by one).
CONSUMES = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
]
VULNERABILITY_REPORT = "application/vnd.security.vulnerability.report; version=1.1"
# The same report under the name Harbor 2.0 to 2.9 ask for.
HARBOR_REPORT_1_0 = "application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0"
SBOM_REPORT = "application/vnd.security.sbom.report+json; version=1.0"
CYCLONEDX = "application/vnd.cyclonedx+json"
METADATA_TYPE = "application/vnd.scanner.adapter.metadata+json; version=1.1"
SCAN_RESPONSE_TYPE = "application/vnd.scanner.adapter.scan.response+json; version=1.0"

# regscan's severities, and the words advisories use, on Harbor's scale.
_SEVERITIES = {
    "critical": "Critical",
    "high": "High",
    "important": "High",
    "medium": "Medium",
    "moderate": "Medium",
    "low": "Low",
    "negligible": "Negligible",
    "unimportant": "Negligible",
}
_ORDER = ["Unknown", "Negligible", "Low", "Medium", "High", "Critical"]


def metadata(vulndb_changed_at: datetime | None) -> dict[str, Any]:
    """Who the scanner is, what it reads and writes, and how fresh its data is."""
    properties = {"harbor.scanner-adapter/scanner-type": "os-package-vulnerability"}
    if vulndb_changed_at is not None:
        properties["harbor.scanner-adapter/vulnerability-database-updated-at"] = (
            ts(vulndb_changed_at) or ""
        )
    return {
        "scanner": SCANNER,
        "capabilities": [
            {
                "type": "vulnerability",
                "consumes_mime_types": CONSUMES,
                "produces_mime_types": [VULNERABILITY_REPORT, HARBOR_REPORT_1_0],
            },
            {
                "type": "sbom",
                "consumes_mime_types": CONSUMES,
                "produces_mime_types": [SBOM_REPORT],
                "additional_attributes": {"sbom_media_types": [CYCLONEDX]},
            },
        ],
        "properties": properties,
    }


def artifact(target: dict[str, Any], images: Sequence[Image]) -> dict[str, str]:
    """The artifact a report is about, as Harbor named it in its request."""
    return {
        "repository": target.get("repo", ""),
        "digest": target.get("digest", ""),
        "tag": target.get("tag", ""),
        "mime_type": images[0].media_type if images else "",
    }


def vulnerability_report(
    target: dict[str, Any], images: Sequence[Image], found: Sequence[Finding], now: datetime
) -> dict[str, Any]:
    """Every finding of the scanned images, once each, with the worst severity on top."""
    items = _unique(vulnerability_item(f) for f in found)
    return {
        "generated_at": ts(now),
        "artifact": artifact(target, images),
        "scanner": SCANNER,
        "severity": max((i["severity"] for i in items), key=_ORDER.index, default="Unknown"),
        "vulnerabilities": items,
    }


def vulnerability_item(f: Finding) -> dict[str, Any]:
    d = f.detail
    status = d.get("status") or ""
    item: dict[str, Any] = {
        "id": f.vuln_id,
        "package": f.package_name,
        "version": f.package_version,
        "fix_version": status.removeprefix("fixed in ") if status.startswith("fixed in ") else "",
        "severity": _SEVERITIES.get(f.severity.lower(), "Unknown"),
        "description": d.get("description") or d.get("title") or "",
        "links": [d["link"]] if d.get("link") else [],
        "vendor_attributes": {"packageType": f.package_type, "status": status},
    }
    cvss = _cvss(f.cvss, d.get("vecStr") or "")
    if cvss:
        item["preferred_cvss"] = cvss
    return item


def _cvss(score: float | None, vector: str) -> dict[str, Any]:
    if vector.startswith("CVSS:3") or (score is not None and not vector):
        return {k: v for k, v in (("score_v3", score), ("vector_v3", vector)) if v}
    if vector:
        return {k: v for k, v in (("score_v2", score), ("vector_v2", vector)) if v}
    return {}


def _unique(items: Any) -> list[dict[str, Any]]:
    """One item per (vulnerability, package, version): an index's platform images often
    share their findings."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in items:
        seen.setdefault((item["id"], item["package"], item["version"]), item)
    return sorted(seen.values(), key=lambda i: (-_ORDER.index(i["severity"]), i["id"]))


def sbom_report(
    target: dict[str, Any],
    stored: Sequence[tuple[ScanResult, Image, list[Finding]]],
    now: datetime,
) -> dict[str, Any]:
    """The CycloneDX document of the scanned image (the first platform image of an index)."""
    result, image, found = stored[0]
    document = json.loads(JsonV1Dot6(sbom(result, image, found)).output_as_string())
    return {
        "generated_at": ts(now),
        "artifact": artifact(target, [image]),
        "scanner": SCANNER,
        "media_type": CYCLONEDX,
        "sbom": document,
    }
