"""How stored rows look on the wire: the reference shapes, plus a few fields of ours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.orm import Session

from core.views import ts
from models import Finding, Image, ImageScan, ScanResult, Tag
from models import callbacks as callback_store
from models.base import utcnow
from scanner.vulns.findings import risk_factors

SEVERITIES = ("critical", "high", "medium", "low")


def item_error_view(item: ImageScan) -> dict[str, Any]:
    return {
        "registry": item.registry_host,
        "repo": item.repository,
        "tag": item.tag,
        "digest": item.digest,
        "status": item.status.value,
        "err": item.error or "",
    }


# How a sweep notes a registry whose images it could not list (worker/regular.py).
DISCOVERY_PREFIX = "discovery in "


def job_error_views(error: str | None) -> list[dict[str, Any]]:
    """A job's own errors (not an image's), each as an entry of a status's ``errors``:
    a failed discovery names its registry."""
    views = []
    for line in (error or "").splitlines():
        if not line.strip():
            continue
        registry, failed = "", line.startswith(DISCOVERY_PREFIX)
        if failed:
            registry = line.removeprefix(DISCOVERY_PREFIX).partition(": ")[0]
        views.append(
            {
                "registry": registry,
                "repo": "",
                "tag": "",
                "digest": "",
                "status": "discovery-failed" if failed else "failed",
                "err": line,
            }
        )
    return views


def result_view(
    result: ScanResult, image: Image | None, tags: list[Tag], findings: Sequence[Finding] = ()
) -> dict[str, Any]:
    """One entry of ``GET /registry``, shaped like the reference ``ImageScanResult``."""
    image_id = (image.config_digest if image else "") or result.digest
    vulnerabilities = vulnerability_views(findings)
    return {
        "_id": image_id,
        "id": image_id,
        "repoTag": {
            "registry": result.registry_host,
            "repo": result.repository,
            "tag": result.tag,
            "digest": result.digest,
        },
        "tags": [
            {"registry": t.registry_host, "repo": t.repository, "tag": t.name, "digest": t.digest}
            for t in tags
        ],
        "scanTime": ts(result.scanned_at),
        "osDistro": result.os_distro,
        "osDistroVersion": result.os_distro_version,
        "osDistroRelease": image.os_distro_release if image else "",
        "distro": image.distro if image else "",
        "packages": package_groups(image.packages if image else []),
        "vulnerabilities": vulnerabilities,
        "vulnerabilitiesCount": len(vulnerabilities),
        "vulnerabilityDistribution": distribution(vulnerabilities),
        "err": result.err,
        # ours
        "scanID": result.job_id,
        "digest": result.digest,
        "platform": result.platform,
        **(_image_fields(image) if image else {}),
    }


def vulnerability_views(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """An image's findings as the reference shows them, most severe first. Risk factors are
    worked out now, as "Recent vulnerability" changes with the date."""
    now = utcnow()
    views = [{**f.detail, "riskFactors": risk_factors(f.detail, now)} for f in findings]
    return sorted(views, key=_severity_order)


def _severity_order(v: dict[str, Any]) -> tuple[Any, ...]:
    rank = SEVERITIES.index(v["severity"]) if v["severity"] in SEVERITIES else len(SEVERITIES)
    return (rank, -(v["cvss"] or 0), v["packageName"], v["cve"])


def distribution(vulnerabilities: list[dict[str, Any]]) -> dict[str, int]:
    """Counts per severity; ``total`` also counts findings of unknown severity."""
    counts = {**dict.fromkeys(SEVERITIES, 0), "total": len(vulnerabilities)}
    for v in vulnerabilities:
        if v["severity"] in SEVERITIES:
            counts[v["severity"]] += 1
    return counts


def package_groups(packages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference grouping: ``[{pkgsType, pkgs: [{name, version, ...}]}]``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in packages:
        groups.setdefault(p["type"], []).append(
            {
                "name": p["name"],
                "version": p["version"],
                "sourceName": p["source_name"],
                "sourceVersion": p["source_version"],
                "path": "/" + p["path"],
                "layer": p["layer"],
            }
        )
    return [{"pkgsType": kind, "pkgs": pkgs} for kind, pkgs in groups.items()]


def _image_fields(image: Image) -> dict[str, Any]:
    return {
        "mediaType": image.media_type,
        "indexDigest": image.index_digest,
        "os": image.os,
        "architecture": image.architecture,
        "created": ts(image.created),
        "size": image.size,
        "layers": image.layers,
    }


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` taken out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def callback_views(session: Session, job_id: int) -> list[dict[str, Any]]:
    """Every delivery attempt of a job's callback, oldest first."""
    return [
        {
            "attempt": d.attempt,
            "url": without_userinfo(d.url),
            "statusCode": d.status_code,
            "error": d.error,
            "attemptedAt": ts(d.attempted_at),
        }
        for d in callback_store.deliveries(session, job_id)
    ]
