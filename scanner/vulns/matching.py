"""Which OSV records concern an image's packages, as findings in the reference shape.

How an image's packages are named in the vulnerability data:

- OS packages are looked up in the ecosystem of the image's release, and a record for
  the distribution without a release applies to every release of it:
  Debian ``Debian:12`` and ``Debian``; Ubuntu ``Ubuntu:22.04`` and ``Ubuntu:22.04:LTS``;
  Alpine ``Alpine:v3.19`` (major.minor with a "v"); Rocky ``Rocky Linux:9`` and
  ``Rocky Linux``; AlmaLinux ``AlmaLinux:9`` and ``AlmaLinux``; Mageia ``Mageia:9``;
  openSUSE and SUSE by ``PRETTY_NAME``; Photon ``Photon OS:5.0``; Wolfi and Chainguard
  without a release.
- Those ecosystems name *source* packages (dpkg ``Source``, apk origin, source rpm), so a
  binary package is matched by its source name and source version, and the finding is
  reported once per source package, its binaries listed in ``binaryPkgs``. Photon OS
  names binary rpms and is matched by binary name. Red Hat's ecosystem is keyed by
  product streams (CPEs) an image does not tell, so RHEL images get no OS findings.
- Language packages: python in ``PyPI`` (PEP 503 normalised names), nodejs in ``npm``,
  go in ``Go`` (without the "v"), jar in ``Maven`` as ``group:artifact``.

Ranges are evaluated exactly as the OSV schema's evaluation section describes. A
range whose versions the comparator cannot read is skipped and counted.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cvss import CVSS3, CVSS4
from cvss.exceptions import CVSSError

from scanner.vulns.osv import Affected, Event, Range, Record, Severity
from scanner.vulns.versions import InvalidVersion, compare, scheme_for

SEVERITY_ORDER = ("critical", "high", "medium", "low")
RECENT = timedelta(days=30)
OSV_LINK = "https://osv.dev/vulnerability/{}"
# Advisories that announce a fixed package: their publication is the fix's date.
FIX_ADVISORY_PREFIXES = ("DSA-", "DLA-", "DTSA-", "ELA-", "USN-", "ALSA-", "RLSA-", "ALBA-")
LANGUAGE_ECOSYSTEMS = {"python": "PyPI", "nodejs": "npm", "go": "Go", "jar": "Maven"}
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
_PEP503 = re.compile(r"[-_.]+")
_FIELD = re.compile(r"{(\w+)}")
# os-release ID -> the ecosystems of its OS packages, most specific first.
OS_ECOSYSTEMS = {
    "debian": ("Debian:{major}", "Debian"),
    "ubuntu": ("Ubuntu:{minor}", "Ubuntu:{minor}:LTS"),
    "alpine": ("Alpine:v{minor}",),
    "rocky": ("Rocky Linux:{major}", "Rocky Linux"),
    "almalinux": ("AlmaLinux:{major}", "AlmaLinux"),
    "mageia": ("Mageia:{major}",),
    "photon": ("Photon OS:{minor}",),
    "wolfi": ("Wolfi",),
    "chainguard": ("Chainguard",),
    "opensuse-leap": ("openSUSE:{pretty}",),
    "opensuse-tumbleweed": ("openSUSE:{pretty}",),
    "sles": ("SUSE:{pretty}",),
}
# Ecosystems the comparators' own table leaves out, by the packaging they use.
EXTRA_SCHEMES = {"Wolfi": "apk", "Chainguard": "apk", "Photon OS": "rpm"}
# Ecosystems that name binary packages rather than source packages.
BINARY_NAMED = {"photon"}


@dataclass(frozen=True)
class ImageOS:
    distro: str  # os-release ID: "debian", "alpine", ...
    version: str  # VERSION_ID: "12", "3.19.1", ...
    pretty_name: str = ""


@dataclass(frozen=True)
class Target:
    """One package of the image, named as the vulnerability data names it."""

    ecosystems: tuple[str, ...]
    name: str  # as records name it (source name, normalised PyPI name, ...)
    version: str  # compared against the records' versions
    package_type: str
    package_name: str  # as findings show it
    package_version: str
    binaries: tuple[str, ...] = ()


@dataclass
class MatchResult:
    findings: list[dict[str, Any]] = field(default_factory=list)
    # Ranges skipped because a version in them (or the installed one) could not be read.
    unreadable_ranges: int = 0


@dataclass(frozen=True)
class TargetMatch:
    """What the records say about one target: its findings, and the ranges skipped."""

    findings: tuple[dict[str, Any], ...]
    unreadable_ranges: int = 0


@dataclass(frozen=True)
class _Hit:
    record: Record
    affected: Affected
    fix: str | None

    @property
    def names(self) -> set[str]:
        return {self.record.id, *self.record.aliases}


# -- what to look up ------------------------------------------------------------------


def normalise_name(ecosystem: str, name: str) -> str:
    """The name as stored and compared: PyPI names per PEP 503, others unchanged."""
    return _PEP503.sub("-", name).lower() if ecosystem == "PyPI" else name


def os_ecosystems(image_os: ImageOS) -> tuple[str, ...]:
    """The OSV ecosystems whose records apply to the image's OS packages."""
    parts = image_os.version.split(".")
    fields = {"major": parts[0], "minor": ".".join(parts[:2]), "pretty": image_os.pretty_name}
    found = []
    for template in OS_ECOSYSTEMS.get(image_os.distro, ()):
        # An ecosystem that needs a release the image does not say is left out.
        if all(fields[f] for f in _FIELD.findall(template)):
            found.append(template.format(**fields))
    return tuple(found)


def targets(image_os: ImageOS, packages: Iterable[dict[str, Any]]) -> list[Target]:
    """The image's packages as lookups: OS packages grouped by source package."""
    found: list[Target] = []
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ecosystems = os_ecosystems(image_os)
    for p in packages:
        if p["type"] == "package":
            if ecosystems:
                key = _os_key(p, image_os.distro in BINARY_NAMED)
                by_source.setdefault(key, []).append(p)
        elif p["type"] in LANGUAGE_ECOSYSTEMS:
            found.append(_language_target(p))
    for (name, version), group in by_source.items():
        binaries = tuple(sorted({p["name"] for p in group}))
        found.append(Target(ecosystems, name, version, "package", name, version, binaries))
    return found


def _os_key(p: dict[str, Any], by_binary: bool) -> tuple[str, str]:
    if by_binary:
        return p["name"], p["version"]
    return p.get("source_name") or p["name"], p.get("source_version") or p["version"]


def _language_target(p: dict[str, Any]) -> Target:
    ecosystem = LANGUAGE_ECOSYSTEMS[p["type"]]
    version = p["version"]
    if ecosystem == "Go":
        version = version.removeprefix("v")  # OSV's Go versions carry no "v"
    name = normalise_name(ecosystem, p["name"])
    return Target((ecosystem,), name, version, p["type"], p["name"], p["version"])


def lookup_keys(found: Sequence[Target]) -> set[tuple[str, str]]:
    """(ecosystem, name) pairs whose records can concern these targets."""
    return {(eco, t.name) for t in found for eco in t.ecosystems}


# -- matching ---------------------------------------------------------------------------


def match(
    found: Sequence[Target],
    records: Iterable[Record],
    now: datetime,
    memo: dict[Target, TargetMatch] | None = None,
) -> MatchResult:
    """The findings of ``found`` in ``records``: one per vulnerability and package.

    A target's findings depend only on the target and the records naming it, so images
    matched against the same records can share ``memo``: targets already in it are not
    evaluated again, and the ones evaluated here are added to it.
    """
    memo = {} if memo is None else memo
    unique = list(dict.fromkeys(found))
    memo.update(_match_targets([t for t in unique if t not in memo], records, now))
    result = MatchResult()
    for target in unique:
        matched = memo[target]
        result.findings.extend(matched.findings)
        result.unreadable_ranges += matched.unreadable_ranges
    result.findings.sort(key=_finding_order)
    return result


def _match_targets(
    found: Sequence[Target], records: Iterable[Record], now: datetime
) -> dict[Target, TargetMatch]:
    index: dict[tuple[str, str], list[Target]] = {}
    for t in found:
        for eco in t.ecosystems:
            index.setdefault((eco, t.name), []).append(t)
    hits: dict[Target, list[_Hit]] = {t: [] for t in found}
    unreadable: Counter[Target] = Counter()
    for record in records:
        if record.withdrawn is not None:
            continue  # withdrawn: kept for the record, never reported
        for affected in record.affected:
            key = (affected.ecosystem, normalise_name(affected.ecosystem, affected.name))
            for target in index.get(key, ()):
                hit = _evaluate(record, affected, target, unreadable)
                if hit is not None:
                    hits[target].append(hit)
    return {
        target: TargetMatch(
            tuple(_finding(target, *group, now=now) for group in _by_vulnerability(found_hits)),
            unreadable[target],
        )
        for target, found_hits in hits.items()
    }


def _finding_order(f: dict[str, Any]) -> tuple[Any, ...]:
    rank = SEVERITY_ORDER.index(f["severity"]) if f["severity"] in SEVERITY_ORDER else 9
    return (
        rank,
        -(f["cvss"] or 0),
        f["packageName"],
        f["cve"],
        f["packageVersion"],
        f["packageType"],
    )


def _evaluate(
    record: Record, affected: Affected, target: Target, unreadable: Counter[Target]
) -> _Hit | None:
    """A hit when ``target`` is affected, per the schema's ``IsVulnerable``."""
    scheme = _scheme(affected.ecosystem)
    listed = target.version in affected.versions
    for rng in affected.ranges:
        if rng.type == "GIT":
            continue  # commit ranges need the repository's history; versions[] covers them
        range_scheme = "semver" if rng.type == "SEMVER" else scheme
        if range_scheme is None:
            unreadable[target] += 1
            continue
        try:
            affected_here, fix = in_range(rng, target.version, range_scheme)
        except InvalidVersion:
            unreadable[target] += 1
            continue
        if affected_here:
            return _Hit(record, affected, fix)
    return _Hit(record, affected, None) if listed else None


@functools.lru_cache(maxsize=256)
def _scheme(ecosystem: str) -> str | None:
    return scheme_for(ecosystem) or EXTRA_SCHEMES.get(ecosystem.split(":", 1)[0])


def in_range(rng: Range, version: str, scheme: str) -> tuple[bool, str | None]:
    """Whether ``version`` is in the range, and the version that fixes it if any.

    Raises ``InvalidVersion`` when a version cannot be compared under ``scheme``.
    """
    events = sorted(rng.events, key=functools.cmp_to_key(_event_cmp(scheme)))
    limits = [e.version for e in events if e.kind == "limit"]
    if limits and not any(_below_limit(version, limit, scheme) for limit in limits):
        return False, None
    affected = False
    for e in events:
        affected = _state_after(e, version, scheme, affected)
    if not affected:
        return False, None
    fixes = (e.version for e in events if e.kind == "fixed")
    return True, next((f for f in fixes if compare(scheme, version, f) < 0), None)


def _state_after(e: Event, version: str, scheme: str, affected: bool) -> bool:
    """The walk's state once it has passed event ``e`` (events in ascending order)."""
    if e.kind == "introduced" and (e.version == "0" or compare(scheme, version, e.version) >= 0):
        return True
    if e.kind == "fixed" and compare(scheme, version, e.version) >= 0:
        return False
    if e.kind == "last_affected" and compare(scheme, version, e.version) > 0:
        return False
    return affected


def _below_limit(version: str, limit: str, scheme: str) -> bool:
    return "*" in limit or compare(scheme, version, limit) < 0


def _event_cmp(scheme: str) -> Callable[[Event, Event], int]:
    def cmp(a: Event, b: Event) -> int:
        ends = _position(a), _position(b)
        return ends[0] - ends[1] if any(ends) else compare(scheme, a.version, b.version)

    return cmp


def _position(event: Event) -> int:
    """Events that sort at an end whatever the scheme: introduced "0", limit "*"."""
    if event.kind == "introduced" and event.version == "0":
        return -1
    if event.kind == "limit" and "*" in event.version:
        return 1
    return 0


# -- one vulnerability per CVE ----------------------------------------------------------


def _by_vulnerability(hits: list[_Hit]) -> list[tuple[str, list[_Hit]]]:
    """Hits that name each other (by id or alias) as one vulnerability; a group that
    names several CVEs gives one vulnerability per CVE."""
    groups: list[tuple[str, list[_Hit]]] = []
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


def _cves(hit: _Hit) -> set[str]:
    return {n for n in hit.names if n.startswith("CVE-")}


def _preferred_id(hits: list[_Hit]) -> str:
    # Among advisories without a CVE, a GHSA id is the one people search for.
    ids = sorted(h.record.id for h in hits)
    return next((i for i in ids if i.startswith("GHSA-")), ids[0])


def _components(hits: list[_Hit]) -> list[list[_Hit]]:
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
    groups: dict[int, list[_Hit]] = {}
    for i, hit in enumerate(hits):
        groups.setdefault(root(i), []).append(hit)
    return list(groups.values())


# -- the finding, in the reference shape -------------------------------------------------


def _finding(target: Target, vuln_id: str, hits: list[_Hit], *, now: datetime) -> dict[str, Any]:
    hits = sorted(hits, key=lambda h: (h.record.id != vuln_id, h.record.id))
    score, vector, severity = _severity(hits)
    finding = {
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


def _severity(hits: list[_Hit]) -> tuple[float | None, str, str]:
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


def _rating(hits: list[_Hit], entries: list[Severity]) -> str:
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


def _status(target: Target, hits: list[_Hit]) -> str:
    fixes = [h.fix for h in hits if h.fix]
    if fixes:
        return f"fixed in {_highest(target, hits, fixes)}"
    for h in hits:
        for data in (h.affected.ecosystem_specific, h.affected.database_specific):
            said = data.get("status") or data.get("fix_status")
            if isinstance(said, str) and said.strip().lower() in WONT_FIX:
                return "will not fix"
    return "open"


def _highest(target: Target, hits: list[_Hit], fixes: list[str]) -> str:
    """The highest fix: the first version every matching record calls fixed."""
    scheme = _scheme(hits[0].affected.ecosystem)
    if scheme is None:
        return fixes[0]
    try:
        return max(fixes, key=functools.cmp_to_key(lambda a, b: compare(scheme, a, b)))
    except InvalidVersion:
        return fixes[0]


def _fix_date(hits: list[_Hit]) -> datetime | None:
    dates = (
        h.record.published for h in hits if h.fix and h.record.id.startswith(FIX_ADVISORY_PREFIXES)
    )
    return _earliest(dates)


def _earliest(values: Iterable[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _epoch(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def _link(hits: list[_Hit]) -> str:
    for wanted in ("ADVISORY", "WEB"):
        for h in hits:
            for ref in h.record.references:
                if ref.type == wanted:
                    return ref.url
    return OSV_LINK.format(hits[0].record.id)


def _description(hits: list[_Hit]) -> str:
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
