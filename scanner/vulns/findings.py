"""Findings, in the reference shape: one per vulnerability and package.

Records that name each other (a DSA or GHSA aliasing a CVE) are one vulnerability,
reported under its CVE. Each finding takes its score and severity from the first
readable CVSS v3 vector, else v4, else the database's own rating; its status from the
highest fix; and its risk factors from all of these.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cvss import CVSS3, CVSS4
from cvss.exceptions import CVSSError

from scanner.vulns.osv import Affected, Record, Severity
from scanner.vulns.ranges import scheme_of
from scanner.vulns.versions import InvalidVersion, compare

if TYPE_CHECKING:
    from scanner.vulns.matching import Target

SEVERITY_ORDER = ("critical", "high", "medium", "low")
RECENT = timedelta(days=30)
OSV_LINK = "https://osv.dev/vulnerability/{}"
# Advisories that announce a fixed package: their publication is the fix's date.
FIX_ADVISORY_PREFIXES = ("DSA-", "DLA-", "DTSA-", "ELA-", "USN-", "ALSA-", "RLSA-", "ALBA-")
# Words databases use for their own rating, on our scale.
RATINGS = {
    "critical": "critical",
    "high": "high",
    "important": "high",
    "moderate": "medium",
    "medium": "medium",
    "low": "low",
    "negligible": "low",
    "unimportant": "low",
}
WONT_FIX = {"will not fix", "will_not_fix", "wont-fix", "wontfix", "won't fix", "ignored"}


@dataclass(frozen=True)
class Hit:
    """A record whose affected entry covers a target, and the version that fixes it."""

    record: Record
    affected: Affected
    fix: str | None

    @property
    def names(self) -> set[str]:
        return {self.record.id, *self.record.aliases}


def finding_order(f: dict[str, Any]) -> tuple[Any, ...]:
    """How findings are listed: the most severe first, then by CVSS score and package."""
    rank = SEVERITY_ORDER.index(f["severity"]) if f["severity"] in SEVERITY_ORDER else 9
    return (
        rank,
        -(f["cvss"] or 0),
        f["packageName"],
        f["cve"],
        f["packageVersion"],
        f["packageType"],
    )


# -- one vulnerability per CVE ----------------------------------------------------------


def by_vulnerability(hits: list[Hit]) -> list[tuple[str, list[Hit]]]:
    """Hits that name each other (by id or alias) as one vulnerability; a group that
    names several CVEs gives one vulnerability per CVE."""
    groups: list[tuple[str, list[Hit]]] = []
    for component in _components(hits):
        names = set().union(*(h.names for h in component))
        cves = sorted(n for n in names if n.startswith("CVE-"))
        if len(cves) <= 1:
            groups.append((cves[0] if cves else _preferred_id(component), component))
            continue
        for cve in cves:
            own = [h for h in component if cve in h.names or not _cves(h)]
            groups.append((cve, own))
    return groups


def _cves(hit: Hit) -> set[str]:
    return {n for n in hit.names if n.startswith("CVE-")}


def _preferred_id(hits: list[Hit]) -> str:
    # Among advisories without a CVE, a GHSA id is the one people search for.
    ids = sorted(h.record.id for h in hits)
    return next((i for i in ids if i.startswith("GHSA-")), ids[0])


def _components(hits: list[Hit]) -> list[list[Hit]]:
    """Connected groups of hits, two hits being linked when they share a name."""
    parent = list(range(len(hits)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, hit in enumerate(hits):
        for name in hit.names:
            j = owner.setdefault(name, i)
            parent[root(i)] = root(j)
    groups: dict[int, list[Hit]] = {}
    for i, hit in enumerate(hits):
        groups.setdefault(root(i), []).append(hit)
    return list(groups.values())


# -- the finding, in the reference shape -------------------------------------------------


def make_finding(target: Target, vuln_id: str, hits: list[Hit], *, now: datetime) -> dict[str, Any]:
    hits = sorted(hits, key=lambda h: (h.record.id != vuln_id, h.record.id))
    score, vector, severity = _severity(hits)
    finding: dict[str, Any] = {
        "cve": vuln_id,
        "cvss": score,
        "vecStr": vector,
        "severity": severity,
        "status": _status(target, hits),
        "packageName": target.package_name,
        "packageVersion": target.package_version,
        "packageType": target.package_type,
        "binaryPkgs": list(target.binaries),
        "published": _epoch(_earliest(h.record.published for h in hits)),
        "fixDate": _epoch(_fix_date(hits)),
        "link": _link(hits),
        "title": next((h.record.summary for h in hits if h.record.summary), ""),
        "description": _description(hits),
        "sources": sorted(h.record.id for h in hits),
    }
    finding["riskFactors"] = risk_factors(finding, now)
    return finding


def _severity(hits: list[Hit]) -> tuple[float | None, str, str]:
    """(CVSS base score, vector, severity): from the first readable CVSS v3 vector, else
    v4, else the database's own rating; ``(None, "", "")`` when nothing says."""
    entries = [s for h in hits for s in (*h.record.severity, *h.affected.severity)]
    for wanted in ("CVSS_V3", "CVSS_V4"):
        for entry in entries:
            if entry.type == wanted:
                scored = _scored_vector(entry.type, entry.score)
                if scored is not None:
                    return scored
    return None, "", _rating(hits, entries)


# Many findings share a vector (one record, many images): each is parsed once.
@functools.lru_cache(maxsize=16384)
def _scored_vector(kind: str, vector: str) -> tuple[float, str, str] | None:
    try:
        if kind == "CVSS_V3":
            v3 = CVSS3(vector)
            score, word = float(v3.scores()[0]), v3.severities()[0]
        else:
            v4 = CVSS4(vector)
            score, word = float(v4.base_score), v4.severity
    except (CVSSError, ValueError, KeyError, IndexError):
        return None  # a vector the library rejects: try the next one
    return score, vector, RATINGS.get(word.lower(), "low")


def _rating(hits: list[Hit], entries: list[Severity]) -> str:
    """The ecosystem's own word: GHSA/Go ``severity``, Debian ``urgency``, Ubuntu priority."""
    words: list[Any] = [s.score for s in entries if s.type == "Ubuntu"]
    for h in hits:
        for data in (h.affected.ecosystem_specific, h.affected.database_specific):
            words += [data.get("severity"), data.get("urgency")]
        words += [h.record.database_specific.get("severity")]
        words += [h.record.database_specific.get("urgency")]
    for word in words:
        if isinstance(word, str) and word.strip().lower() in RATINGS:
            return RATINGS[word.strip().lower()]
    return ""


def _status(target: Target, hits: list[Hit]) -> str:
    fixes = [h.fix for h in hits if h.fix]
    if fixes:
        return f"fixed in {_highest(target, hits, fixes)}"
    for h in hits:
        for data in (h.affected.ecosystem_specific, h.affected.database_specific):
            said = data.get("status") or data.get("fix_status")
            if isinstance(said, str) and said.strip().lower() in WONT_FIX:
                return "will not fix"
    return "open"


def _highest(target: Target, hits: list[Hit], fixes: list[str]) -> str:
    """The highest fix: the first version every matching record calls fixed."""
    scheme = scheme_of(hits[0].affected.ecosystem)
    if scheme is None:
        return fixes[0]
    try:
        return max(fixes, key=functools.cmp_to_key(_comparing(scheme)))
    except InvalidVersion:
        return fixes[0]


def _comparing(scheme: str) -> Callable[[str, str], int]:
    def cmp(a: str, b: str) -> int:
        return compare(scheme, a, b)

    return cmp


def _fix_date(hits: list[Hit]) -> datetime | None:
    dates = (
        h.record.published for h in hits if h.fix and h.record.id.startswith(FIX_ADVISORY_PREFIXES)
    )
    return _earliest(dates)


def _earliest(values: Iterable[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _epoch(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def _link(hits: list[Hit]) -> str:
    for wanted in ("ADVISORY", "WEB"):
        for h in hits:
            for ref in h.record.references:
                if ref.type == wanted:
                    return ref.url
    return OSV_LINK.format(hits[0].record.id)


def _description(hits: list[Hit]) -> str:
    for h in hits:
        if h.record.details or h.record.summary:
            return h.record.details or h.record.summary
    return ""


def risk_factors(finding: dict[str, Any], now: datetime) -> dict[str, dict[str, Any]]:
    """The reference's risk factors of a finding, by name (each value an empty object).

    "Recent vulnerability" depends on ``now``, so readers recompute this when showing it.
    """
    factors: dict[str, dict[str, Any]] = {}
    if finding["status"].startswith("fixed in"):
        factors["Has fix"] = {}
    severity = finding["severity"]
    if severity in ("critical", "high", "medium"):
        factors[f"{severity.capitalize()} severity"] = {}
    vector = finding["vecStr"]
    if "/AV:N" in vector:
        factors["Attack vector: network"] = {}
    if "/AC:L" in vector:
        factors["Attack complexity: low"] = {}
    published = finding["published"]
    if published and now.timestamp() - published < RECENT.total_seconds():
        factors["Recent vulnerability"] = {}
    return factors
