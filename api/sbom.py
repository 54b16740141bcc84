"""CycloneDX documents of one scanned image: its packages, with package URLs, and the
vulnerabilities found in them. Made from stored data only."""

from __future__ import annotations

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
from packageurl import PackageURL

from models import Finding, Image, ScanResult


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


def purl(p: dict[str, Any], distro: str) -> PackageURL | None:
    """The package URL of an inventory entry (https://github.com/package-url/purl-spec);
    None for a name no package URL can hold (an image's files say what they like)."""
    if p["type"] == "package":
        kind = next(
            (t for prefix, t in _OS_PURL if p["path"].startswith(prefix) or prefix in p["path"]),
            "generic",
        )
        namespace, name = distro or None, p["name"]
    else:
        kind = _LANG_PURL.get(p["type"], "generic")
        namespace, _, name = p["name"].rpartition(":" if kind == "maven" else "/")
    try:
        return PackageURL(kind, namespace or None, name, p["version"] or None)
    except ValueError:
        return None
