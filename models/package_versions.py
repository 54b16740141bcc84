"""Package versions the fleet holds, and what the vulnerability data says of each.

What the data says about a package depends on the package alone (its ecosystems, name
and version), not on the image holding it: each distinct package version of the fleet
is stored once (``package_versions``), with its findings (``package_findings``) and
their counts by severity as of the data generation it was last matched at. Which images
hold it is :mod:`models.findings`' business. Callers own the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.vuln_records import chunks

SEVERITIES = ("critical", "high", "medium", "low")
COUNT_COLUMNS = ("critical", "high", "medium", "low", "total")


class PackageVersion(Base):
    """A package version some image holds, as the vulnerability data names it, and what
    the data said of it at ``matched_generation`` (its findings, counted by severity)."""

    __tablename__ = "package_versions"
    __table_args__ = (Index("ix_package_versions_name", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of the fields below: they are too long together for a unique index.
    key: Mapped[str] = mapped_column(String(64), unique=True)
    ecosystems: Mapped[str] = mapped_column(String(255))  # "Debian:12|Debian"
    name: Mapped[str] = mapped_column(String(512))  # as records name it
    version: Mapped[str] = mapped_column(String(255))  # as compared with the records'
    package_type: Mapped[str] = mapped_column(String(32))  # as findings show it
    package_name: Mapped[str] = mapped_column(String(512))
    package_version: Mapped[str] = mapped_column(String(255))
    matched_generation: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    critical: Mapped[int] = mapped_column(Integer, default=0)
    high: Mapped[int] = mapped_column(Integer, default=0)
    medium: Mapped[int] = mapped_column(Integer, default=0)
    low: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)  # unknown severity included


class PackageFinding(Base):
    """One vulnerability of one package version, in the reference shape."""

    __tablename__ = "package_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    package_version_id: Mapped[int] = mapped_column(
        ForeignKey("package_versions.id", ondelete="CASCADE"), index=True
    )
    vuln_id: Mapped[str] = mapped_column(String(128), index=True)  # the CVE id when any
    severity: Mapped[str] = mapped_column(String(16), default="")
    cvss: Mapped[float | None] = mapped_column(Float, default=None)
    # The finding as GET /registry shows it (cve, vecStr, status, link, ...), without
    # the image's binary packages, which are the link's.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


@dataclass(frozen=True)
class PackageRef:
    """A package version named as the data names it (a matching target, minus the
    binaries, which differ by image)."""

    ecosystems: tuple[str, ...]
    name: str
    version: str
    package_type: str
    package_name: str
    package_version: str

    @cached_property
    def key(self) -> str:
        fields = (
            "|".join(self.ecosystems),
            self.name,
            self.version,
            self.package_type,
            self.package_name,
            self.package_version,
        )
        return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


@dataclass(frozen=True)
class Counts:
    """Findings by severity; ``total`` counts unknown severities too."""

    critical: int = 0
    high: int = 0
    medium: int = 0
    low: int = 0
    total: int = 0

    @classmethod
    def of(cls, findings: Iterable[Mapping[str, Any]]) -> Counts:
        by = dict.fromkeys(SEVERITIES, 0)
        total = 0
        for f in findings:
            total += 1
            if f["severity"] in by:
                by[f["severity"]] += 1
        return cls(total=total, **by)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self.values(), other.values(), strict=True)))

    def values(self) -> tuple[int, int, int, int, int]:
        return (self.critical, self.high, self.medium, self.low, self.total)

    def __bool__(self) -> bool:
        return any(self.values())


@dataclass(frozen=True)
class Known:
    """A stored package version: its id, the generation it was matched at and its
    findings' counts."""

    id: int
    matched_generation: int | None
    counts: Counts


def ensure_package_versions(session: Session, refs: Iterable[PackageRef]) -> dict[str, Known]:
    """The stored package version of each of ``refs``, by key, adding the missing ones
    (unmatched). Added in key order, so concurrent writers never wait on each other in
    a circle."""
    wanted = {ref.key: ref for ref in refs}
    found = _known(session, wanted)
    missing = sorted(set(wanted) - found.keys())
    if missing:
        rows = [_row(wanted[key]) for key in missing]
        for chunk in chunks(rows):
            session.execute(_insert_ignoring_conflicts(session), chunk)
        found.update(_known(session, missing))
    return found


# Built once: an IN list of hundreds of keys is cheap to send, not to build each time.
_KNOWN = select(
    PackageVersion.key,
    PackageVersion.id,
    PackageVersion.matched_generation,
    *(getattr(PackageVersion, c) for c in COUNT_COLUMNS),
).where(PackageVersion.key.in_(bindparam("keys", expanding=True)))


def _known(session: Session, keys: Iterable[str]) -> dict[str, Known]:
    found: dict[str, Known] = {}
    for chunk in chunks(sorted(keys)):
        for key, pv_id, generation, *counts in session.execute(_KNOWN, {"keys": list(chunk)}):
            found[key] = Known(pv_id, generation, Counts(*counts))
    return found


def _row(ref: PackageRef) -> dict[str, Any]:
    return {
        "key": ref.key,
        "ecosystems": "|".join(ref.ecosystems),
        "name": ref.name,
        "version": ref.version,
        "package_type": ref.package_type,
        "package_name": ref.package_name,
        "package_version": ref.package_version,
    }


def _insert_ignoring_conflicts(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(PackageVersion).on_conflict_do_nothing(index_elements=["key"])
    return sqlite.insert(PackageVersion).on_conflict_do_nothing(index_elements=["key"])


def refs_of(session: Session, pv_ids: Iterable[int]) -> dict[int, PackageRef]:
    """The package versions with these ids, as references to match."""
    out: dict[int, PackageRef] = {}
    for chunk in chunks(sorted(set(pv_ids))):
        for pv in session.scalars(select(PackageVersion).where(PackageVersion.id.in_(chunk))):
            out[pv.id] = PackageRef(
                tuple(pv.ecosystems.split("|")) if pv.ecosystems else (),
                pv.name,
                pv.version,
                pv.package_type,
                pv.package_name,
                pv.package_version,
            )
    return out


def store_matches(
    session: Session, matched: Mapping[int, Sequence[Mapping[str, Any]]], generation: int
) -> dict[int, Counts]:
    """Replace the findings of each package version in ``matched`` (id -> findings) and
    mark it matched at ``generation``; the change of its counts, by id."""
    if not matched:
        return {}
    before = _counts(session, matched)
    for chunk in chunks(sorted(matched)):
        session.execute(delete(PackageFinding).where(PackageFinding.package_version_id.in_(chunk)))
    rows = [
        {
            "package_version_id": pv_id,
            "vuln_id": f["cve"],
            "severity": f["severity"],
            "cvss": f["cvss"],
            "detail": {**f, "binaryPkgs": []},
        }
        for pv_id, found in matched.items()
        for f in found
    ]
    if rows:
        # One multi-row INSERT rather than an ORM object per finding.
        session.execute(insert(PackageFinding), rows)
    after = {pv_id: Counts.of(found) for pv_id, found in matched.items()}
    # An ORM bulk UPDATE by primary key: one statement run for every row.
    session.execute(
        update(PackageVersion),
        [
            {"id": pv_id, "matched_generation": generation, **columns(counts)}
            for pv_id, counts in after.items()
        ],
    )
    return {pv_id: after[pv_id] - before.get(pv_id, Counts()) for pv_id in matched}


def _counts(session: Session, pv_ids: Iterable[int]) -> dict[int, Counts]:
    out: dict[int, Counts] = {}
    columns = (PackageVersion.id, *(getattr(PackageVersion, c) for c in COUNT_COLUMNS))
    for chunk in chunks(sorted(pv_ids)):
        for pv_id, *values in session.execute(select(*columns).where(PackageVersion.id.in_(chunk))):
            out[pv_id] = Counts(*values)
    return out


def columns(counts: Counts) -> dict[str, int]:
    return dict(zip(COUNT_COLUMNS, counts.values(), strict=True))


Due = tuple[int, tuple[str, ...], str]  # a package version: id, ecosystems, name


def behind(
    session: Session, generation: int, *, ids: Iterable[int] = (), names: Iterable[str] = ()
) -> list[Due]:
    """The package versions matched before ``generation``, among ``ids`` or named
    ``names``, by id."""
    columns = (PackageVersion.id, PackageVersion.ecosystems, PackageVersion.name)
    older = PackageVersion.matched_generation < generation
    found: dict[int, Due] = {}
    for column, values in ((PackageVersion.id, ids), (PackageVersion.name, names)):
        for chunk in chunks(sorted(set(values))):
            stmt = select(*columns).where(older, column.in_(chunk))
            for pv_id, ecosystems, name in session.execute(stmt):
                found[pv_id] = (pv_id, tuple(ecosystems.split("|")), name)
    return [found[pv_id] for pv_id in sorted(found)]


def behind_any(session: Session, generation: int, limit: int) -> list[Due]:
    """Up to ``limit`` package versions matched before ``generation``, by id."""
    stmt = (
        select(PackageVersion.id, PackageVersion.ecosystems, PackageVersion.name)
        .where(PackageVersion.matched_generation < generation)
        .order_by(PackageVersion.id)
        .limit(limit)
    )
    return [(i, tuple(e.split("|")), n) for i, e, n in session.execute(stmt)]
