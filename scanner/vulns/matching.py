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

Ranges are evaluated exactly as the OSV schema's evaluation section describes
(``ranges``). A range whose versions the comparator cannot read is skipped and
counted. What a finding says, and which records make one vulnerability, is in
``findings``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scanner.vulns.findings import Hit, by_vulnerability, finding_order, make_finding
from scanner.vulns.osv import Affected, Record
from scanner.vulns.ranges import in_range, scheme_of
from scanner.vulns.versions import InvalidVersion

LANGUAGE_ECOSYSTEMS = {"python": "PyPI", "nodejs": "npm", "go": "Go", "jar": "Maven"}
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
    result.findings.sort(key=finding_order)
    return result


def _match_targets(
    found: Sequence[Target], records: Iterable[Record], now: datetime
) -> dict[Target, TargetMatch]:
    index: dict[tuple[str, str], list[Target]] = {}
    for t in found:
        for eco in t.ecosystems:
            index.setdefault((eco, t.name), []).append(t)
    hits: dict[Target, list[Hit]] = {t: [] for t in found}
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
            tuple(make_finding(target, *group, now=now) for group in by_vulnerability(found_hits)),
            unreadable[target],
        )
        for target, found_hits in hits.items()
    }


def _evaluate(
    record: Record, affected: Affected, target: Target, unreadable: Counter[Target]
) -> Hit | None:
    """A hit when ``target`` is affected, per the schema's ``IsVulnerable``."""
    scheme = scheme_of(affected.ecosystem)
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
            return Hit(record, affected, fix)
    return Hit(record, affected, None) if listed else None
