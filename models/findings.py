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
    delete,
    func,
    insert,
    or_,
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
    binaries: Mapped[list[str]] = mapped_column(JSON, default=list)


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

    @property
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
    """A stored package version: its id, and the generation it was matched at."""

    id: int
    matched_generation: int | None


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
            session.execute(_insert_ignoring_conflicts(session).values(chunk))
        found.update(_known(session, missing))
    return found


def _known(session: Session, keys: Iterable[str]) -> dict[str, Known]:
    found: dict[str, Known] = {}
    for chunk in chunks(sorted(keys)):
        stmt = select(
            PackageVersion.key, PackageVersion.id, PackageVersion.matched_generation
        ).where(PackageVersion.key.in_(chunk))
        for key, pv_id, generation in session.execute(stmt):
            found[key] = Known(pv_id, generation)
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


def mark_matched(session: Session, pv_ids: Iterable[int], generation: int) -> None:
    """Package versions the data did not change for: current as they are."""
    for chunk in chunks(sorted(set(pv_ids))):
        session.execute(
            update(PackageVersion)
            .where(PackageVersion.id.in_(chunk))
            .values(matched_generation=generation)
        )


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


def generations_of(session: Session, pv_ids: Iterable[int]) -> list[tuple[int, int | None]]:
    """(id, matched generation) of these package versions."""
    out: list[tuple[int, int | None]] = []
    for chunk in chunks(sorted(set(pv_ids))):
        stmt = select(PackageVersion.id, PackageVersion.matched_generation).where(
            PackageVersion.id.in_(chunk)
        )
        out += [(pv_id, g) for pv_id, g in session.execute(stmt)]
    return out


def stale_generations(session: Session, generation: int) -> list[int]:
    """The generations package versions older than ``generation`` were matched at."""
    stmt = (
        select(PackageVersion.matched_generation)
        .where(PackageVersion.matched_generation < generation)
        .distinct()
    )
    return sorted(g for g in session.scalars(stmt) if g is not None)


def stale_at(session: Session, since: int, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` (id, ``since``) of package versions matched at ``since``."""
    stmt = (
        select(PackageVersion.id)
        .where(PackageVersion.matched_generation == since)
        .order_by(PackageVersion.id)
        .limit(limit)
    )
    return [(pv_id, since) for pv_id in session.scalars(stmt)]


def stale_naming(
    session: Session, since: int, names: Iterable[str]
) -> list[tuple[int, int, tuple[str, ...], str]]:
    """(id, ``since``, ecosystems, name) of the package versions matched at ``since``
    whose name is one of ``names``."""
    out = []
    for chunk in chunks(sorted(set(names))):
        stmt = select(PackageVersion.id, PackageVersion.ecosystems, PackageVersion.name).where(
            PackageVersion.matched_generation == since, PackageVersion.name.in_(chunk)
        )
        out += [(i, since, tuple(e.split("|")), n) for i, e, n in session.execute(stmt)]
    return sorted(out)


def mark_all_matched(session: Session, generation: int) -> int:
    """Every package version matched before ``generation``: current as it is."""
    stmt = (
        update(PackageVersion)
        .where(PackageVersion.matched_generation < generation)
        .values(matched_generation=generation)
    )
    return session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]


def oldest_match(session: Session) -> int | None:
    return session.scalar(select(func.min(PackageVersion.matched_generation)))


def forget_unheld(session: Session) -> int:
    """Delete the package versions no image holds any more; how many."""
    held = select(ImageTarget.package_version_id)
    stmt = delete(PackageVersion).where(PackageVersion.id.not_in(held))
    return session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]


# -- images ------------------------------------------------------------------------------


def link_image(
    session: Session, image: Image, links: Mapping[int, Sequence[str]], generation: int
) -> None:
    """Replace what ``image`` holds (package version id -> its binaries) and set its
    counts from theirs. Its findings are current at ``generation`` unless one of its
    package versions is older. Under :func:`lock_for_linking`."""
    session.execute(delete(ImageTarget).where(ImageTarget.image_id == image.id))
    if links:
        session.execute(
            insert(ImageTarget),
            [
                {"image_id": image.id, "package_version_id": pv_id, "binaries": list(binaries)}
                for pv_id, binaries in sorted(links.items())
            ],
        )
    summary, oldest = _summary(session, image.id)
    for column, value in _columns(summary).items():
        setattr(image, f"vulns_{column}", value)
    image.matched_generation = generation if oldest is None else min(oldest, generation)
    session.flush()


def _summary(session: Session, image_id: int) -> tuple[Counts, int | None]:
    columns = [func.coalesce(func.sum(getattr(PackageVersion, c)), 0) for c in _COUNT_COLUMNS]
    stmt = (
        select(*columns, func.min(PackageVersion.matched_generation))
        .join(ImageTarget, ImageTarget.package_version_id == PackageVersion.id)
        .where(ImageTarget.image_id == image_id)
    )
    *values, oldest = session.execute(stmt).one()
    return Counts(*(int(v) for v in values)), oldest


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


def mark_images_current(session: Session, generation: int) -> int:
    """Every linked image matched before ``generation``: current, once no package
    version is older. Under :func:`lock_for_refresh`."""
    stmt = (
        update(Image)
        .where(Image.matched_generation < generation)
        .values(matched_generation=generation)
    )
    return session.execute(stmt).rowcount or 0  # type: ignore[attr-defined]


def unlinked_images(session: Session, limit: int) -> list[Image]:
    """Up to ``limit`` images with an inventory never linked to package versions."""
    stmt = (
        select(Image)
        .where(Image.analyser_version.is_not(None), Image.matched_generation.is_(None))
        .order_by(Image.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def any_due(session: Session, generation: int) -> bool:
    """Whether some image or package version is behind ``generation``."""
    images = select(Image.id).where(
        Image.analyser_version.is_not(None),
        or_(Image.matched_generation.is_(None), Image.matched_generation < generation),
    )
    if session.scalar(images.limit(1)) is not None:
        return True
    versions = select(PackageVersion.id).where(PackageVersion.matched_generation < generation)
    return session.scalar(versions.limit(1)) is not None


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
            detail = {**row.detail, "binaryPkgs": list(binaries or [])}
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
