"""Findings, stored once per package version.

What the vulnerability data says about a package depends on the package alone (its
ecosystems, name and version), not on the image holding it. So findings are stored per
distinct package version of the fleet (``package_versions`` and ``package_findings``),
and ``image_targets`` says which images hold which package versions (with the binary
packages each image has of a source package). An image's findings are the join of the
two; its counts per severity are kept on its row, maintained as the data changes.

Writers take turns through :func:`lock_for_linking` (any number at once: a scan linking
an image, matching package versions nobody held before) and :func:`lock_for_refresh`
(one at a time, alone: re-matching package versions some image already holds, which
changes the counts of every image holding them). Callers own the transaction.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
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
    Select,
    String,
    Text,
    bindparam,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.images import Image
from models.vuln_records import chunks

SEVERITIES = ("critical", "high", "medium", "low")
# The advisory lock (PostgreSQL) that refreshers hold alone and linkers share.
_FINDINGS_LOCK = 0x7265_6773_6366_6E64  # "regscfnd"


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


class ImageTarget(Base):
    """An image holds a package version (for an OS source package: these binaries)."""

    __tablename__ = "image_targets"
    __table_args__ = (
        Index("ix_image_targets_package_version_image", "package_version_id", "image_id"),
    )

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    package_version_id: Mapped[int] = mapped_column(
        ForeignKey("package_versions.id", ondelete="CASCADE"), primary_key=True
    )
    # The binary packages, one per line (a package name holds no line break); plain
    # text rather than JSON: there is a row per package an image holds.
    binaries: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class Finding:
    """One vulnerability of one package of one image, as readers see it."""

    image_id: int
    vuln_id: str
    package_type: str
    package_name: str
    package_version: str
    severity: str
    cvss: float | None
    detail: dict[str, Any]  # the whole finding, binaryPkgs included


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


# -- taking turns ---------------------------------------------------------------------------


def lock_for_linking(session: Session) -> None:
    """Share the findings with other linkers until commit: no refresh runs meanwhile, so
    the counts read are those of the links written. Take it before writing image rows:
    refreshers write them too, holding the lock alone."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _FINDINGS_LOCK})
    # SQLite: the caller's transaction holds the database's one write lock from its
    # first write, and reads after it see every committed link.


def lock_for_refresh(session: Session) -> None:
    """Hold the findings alone until commit. Call first in the transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FINDINGS_LOCK})
    else:
        # A write first takes SQLite's write lock (an UPDATE takes it even when it
        # matches no row): no linker writes between what this transaction reads and
        # what it writes.
        session.execute(update(PackageVersion).where(PackageVersion.id == -1).values(total=0))


# -- package versions ----------------------------------------------------------------------


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
    *(getattr(PackageVersion, c) for c in ("critical", "high", "medium", "low", "total")),
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
            {"id": pv_id, "matched_generation": generation, **_columns(counts)}
            for pv_id, counts in after.items()
        ],
    )
    return {pv_id: after[pv_id] - before.get(pv_id, Counts()) for pv_id in matched}


def _counts(session: Session, pv_ids: Iterable[int]) -> dict[int, Counts]:
    out: dict[int, Counts] = {}
    columns = (PackageVersion.id, *(getattr(PackageVersion, c) for c in _COUNT_COLUMNS))
    for chunk in chunks(sorted(pv_ids)):
        for pv_id, *values in session.execute(select(*columns).where(PackageVersion.id.in_(chunk))):
            out[pv_id] = Counts(*values)
    return out


_COUNT_COLUMNS = ("critical", "high", "medium", "low", "total")


def _columns(counts: Counts) -> dict[str, int]:
    return dict(zip(_COUNT_COLUMNS, counts.values(), strict=True))


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


def forget_unheld(session: Session) -> int:
    """Delete the package versions no image holds any more; how many."""
    held = select(ImageTarget.package_version_id)
    stmt = delete(PackageVersion).where(PackageVersion.id.not_in(held))
    return session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]


# -- images ------------------------------------------------------------------------------


Holding = Mapping[int, tuple[Sequence[str], Counts]]  # package version id -> binaries, counts


def link_images(session: Session, links: Sequence[tuple[Image, Holding, int]]) -> None:
    """Replace what each image holds (package version id -> the binaries it has of it,
    and the package version's counts) and set its counts, the sum of theirs; its
    findings are current at the generation given with it. Under
    :func:`lock_for_linking`, with the counts read under it."""
    connection = session.connection()
    ids = [image.id for image, _holding, _at in links]
    for chunk in chunks(ids):
        connection.execute(delete(ImageTarget).where(ImageTarget.image_id.in_(chunk)))
    rows = [
        {"image_id": image.id, "package_version_id": pv_id, "binaries": "\n".join(binaries)}
        for image, holding, _at in links
        for pv_id, (binaries, _counts) in sorted(holding.items())
    ]
    if rows:
        connection.execute(insert(ImageTarget), rows)
    for image, holding, at in links:
        total = [0] * len(_COUNT_COLUMNS)
        for _binaries, counts in holding.values():
            for n, value in enumerate(counts.values()):
                total[n] += value
        for column, value in zip(_COUNT_COLUMNS, total, strict=True):
            setattr(image, f"vulns_{column}", value)
        image.matched_generation = at
    session.flush()


def apply_changes(session: Session, changes: Mapping[int, Counts]) -> int:
    """Add each package version's change of counts to the images holding it; how many
    images changed. Images whose changes add up the same are updated by one statement.
    Under :func:`lock_for_refresh`."""
    changed = {pv_id: c for pv_id, c in changes.items() if c}
    if not changed:
        return 0
    per_image: dict[int, list[int]] = defaultdict(lambda: [0] * len(_COUNT_COLUMNS))
    for chunk in chunks(sorted(changed)):
        stmt = select(ImageTarget.image_id, ImageTarget.package_version_id).where(
            ImageTarget.package_version_id.in_(chunk)
        )
        for image_id, pv_id in session.execute(stmt):
            total = per_image[image_id]
            for n, value in enumerate(changed[pv_id].values()):
                total[n] += value
    by_change: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for image_id, total in per_image.items():
        if any(total):
            by_change[tuple(total)].append(image_id)
    for change, image_ids in by_change.items():
        values = {
            f"vulns_{column}": getattr(Image, f"vulns_{column}") + delta
            for column, delta in zip(_COUNT_COLUMNS, change, strict=True)
            if delta
        }
        for chunk in chunks(sorted(image_ids)):
            session.execute(update(Image).where(Image.id.in_(chunk)).values(values))
    return sum(len(ids) for ids in by_change.values())


def current_at(image: Image, findings_generation: int) -> int | None:
    """The generation of the data an image's findings are current at (``None``: never
    linked, no findings yet), given the generation every finding is current at."""
    if image.matched_generation is None:
        return None
    return max(image.matched_generation, findings_generation)


def unlinked_images(session: Session, limit: int) -> list[Image]:
    """Up to ``limit`` images with an inventory never linked to package versions."""
    stmt = (
        select(Image)
        .where(Image.analyser_version.is_not(None), Image.matched_generation.is_(None))
        .order_by(Image.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def any_due(session: Session, generation: int, findings_generation: int) -> bool:
    """Whether some image was never linked, or the findings are behind ``generation``."""
    if findings_generation < generation:
        return True
    never = select(Image.id).where(
        Image.analyser_version.is_not(None), Image.matched_generation.is_(None)
    )
    return session.scalar(never.limit(1)) is not None


# -- reading -------------------------------------------------------------------------------


def findings_of(session: Session, image_ids: Sequence[int]) -> dict[int, list[Finding]]:
    """The findings of each image, by CVSS score (highest first), then vulnerability id."""
    out: dict[int, list[Finding]] = defaultdict(list)
    ids = sorted(set(image_ids))
    for chunk in chunks(ids):
        stmt = (
            select(ImageTarget.image_id, ImageTarget.binaries, PackageFinding)
            .join(
                PackageFinding,
                PackageFinding.package_version_id == ImageTarget.package_version_id,
            )
            .where(ImageTarget.image_id.in_(chunk))
        )
        for image_id, binaries, row in session.execute(stmt):
            detail = {**row.detail, "binaryPkgs": binaries.split("\n") if binaries else []}
            out[image_id].append(
                Finding(
                    image_id=image_id,
                    vuln_id=row.vuln_id,
                    package_type=detail["packageType"],
                    package_name=detail["packageName"],
                    package_version=detail["packageVersion"],
                    severity=row.severity,
                    cvss=row.cvss,
                    detail=detail,
                )
            )
    for found in out.values():
        found.sort(key=_reading_order)
    return out


def _reading_order(f: Finding) -> tuple[Any, ...]:
    return (f.cvss is None, -(f.cvss or 0), f.vuln_id, f.package_name, f.package_version)


def images_affected_by(vuln_id: str) -> Select[int]:
    """Ids of the images with a finding of ``vuln_id``."""
    return (
        select(ImageTarget.image_id)
        .join(PackageFinding, PackageFinding.package_version_id == ImageTarget.package_version_id)
        .where(PackageFinding.vuln_id == vuln_id.upper())
    )
