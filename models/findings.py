"""Which images hold which package versions, and the findings that makes theirs.

Findings are stored once per package version (:mod:`models.package_versions`);
``image_targets`` says which images hold which package versions (with the binary
packages each image has of a source package). An image's findings are the join of the
two; its counts per severity are kept on its row, maintained as the data changes.

Writers take turns through :func:`lock_for_linking` (any number at once: a scan linking
an image, matching package versions nobody held before) and :func:`lock_for_refresh`
(one at a time, alone: re-matching package versions some image already holds, which
changes the counts of every image holding them). Callers own the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.images import Image
from models.package_versions import COUNT_COLUMNS, Counts, PackageFinding, PackageVersion
from models.vuln_records import chunks

# The advisory lock (PostgreSQL) that refreshers hold alone and linkers share.
_FINDINGS_LOCK = 0x7265_6773_6366_6E64  # "regscfnd"


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
        total = [0] * len(COUNT_COLUMNS)
        for _binaries, counts in holding.values():
            for n, value in enumerate(counts.values()):
                total[n] += value
        for column, value in zip(COUNT_COLUMNS, total, strict=True):
            setattr(image, f"vulns_{column}", value)
        image.matched_generation = at
    session.flush()


# What a refresh changed, per package version: in a table of the connection's own, so
# that one statement adds it up per image and updates every image holding them.
_CHANGES = Table(
    "package_version_changes",
    MetaData(),
    Column("package_version_id", BigInteger, primary_key=True),
    *(Column(column, Integer, nullable=False) for column in COUNT_COLUMNS),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DELETE ROWS",
)


def apply_changes(session: Session, changes: Mapping[int, Counts]) -> int:
    """Add each package version's change of counts to the images holding it, in one
    statement whatever number of images hold them; how many images changed. Under
    :func:`lock_for_refresh`."""
    changed = [
        {"package_version_id": pv_id, **dict(zip(COUNT_COLUMNS, c.values(), strict=True))}
        for pv_id, c in sorted(changes.items())
        if c
    ]
    if not changed:
        return 0
    connection = session.connection()
    _CHANGES.create(connection, checkfirst=True)
    connection.execute(delete(_CHANGES))  # SQLite keeps rows past commit
    connection.execute(insert(_CHANGES), changed)
    sums = {column: func.sum(_CHANGES.c[column]) for column in COUNT_COLUMNS}
    per_image = (
        select(ImageTarget.image_id, *(total.label(c) for c, total in sums.items()))
        .join(_CHANGES, _CHANGES.c.package_version_id == ImageTarget.package_version_id)
        .group_by(ImageTarget.image_id)
        .having(or_(*(total != 0 for total in sums.values())))
        .subquery()
    )
    stmt = (
        update(Image)
        .where(Image.id == per_image.c.image_id)
        .values(
            {
                f"vulns_{column}": getattr(Image, f"vulns_{column}") + per_image.c[column]
                for column in COUNT_COLUMNS
            }
        )
        .execution_options(synchronize_session=False)
    )
    updated = session.execute(stmt).rowcount  # type: ignore[attr-defined]
    connection.execute(delete(_CHANGES))
    return int(updated or 0)


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
