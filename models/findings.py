"""Findings: what the vulnerability data says about each package of each stored image,
in the reference shape. Findings are derived data: re-matching an image replaces its
findings, never its inventory. Callers own the transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String, delete, insert, select, tuple_
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base
from models.images import Image, matched_before
from models.vuln_records import chunks, current_generation

# A package as findings name it: (packageType, packageName, packageVersion).
PackageKey = tuple[str, str, str]


class Finding(Base):
    """One vulnerability of one package of one image, in the reference shape."""

    __tablename__ = "findings"
    __table_args__ = (Index("ix_findings_vuln_id", "vuln_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    vuln_id: Mapped[str] = mapped_column(String(128))  # the CVE id when there is one
    package_type: Mapped[str] = mapped_column(String(32))
    package_name: Mapped[str] = mapped_column(String(512))
    package_version: Mapped[str] = mapped_column(String(255))
    severity: Mapped[str] = mapped_column(String(16), default="")
    cvss: Mapped[float | None] = mapped_column(Float, default=None)
    # The whole finding as GET /registry shows it (cve, vecStr, status, link, ...).
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


def images_due(session: Session, generation: int, limit: int) -> list[Image]:
    """Up to ``limit`` images due for re-matching, row-locked (PostgreSQL); images another
    worker is re-matching right now are skipped rather than waited for."""
    stmt = (
        select(Image)
        .where(matched_before(generation))
        .order_by(Image.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def any_due(session: Session) -> bool:
    generation = current_generation(session)
    return session.scalar(select(Image.id).where(matched_before(generation)).limit(1)) is not None


def replace_findings(
    session: Session,
    image: Image,
    findings: Sequence[dict[str, Any]],
    generation: int,
    *,
    only: set[PackageKey] | None = None,
) -> None:
    """An image's findings replaced, all of them or with ``only`` those of these
    packages, and the generation they were matched against."""
    stmt = delete(Finding).where(Finding.image_id == image.id)
    if only is None:
        session.execute(stmt)
    else:
        columns = tuple_(Finding.package_type, Finding.package_name, Finding.package_version)
        for chunk in chunks(sorted(only)):
            session.execute(stmt.where(columns.in_(chunk)))
    if findings:
        # One multi-row INSERT rather than an ORM object per finding: an image can have
        # hundreds, and re-matching writes them for every image of the fleet.
        session.execute(
            insert(Finding),
            [
                {
                    "image_id": image.id,
                    "vuln_id": f["cve"],
                    "package_type": f["packageType"],
                    "package_name": f["packageName"],
                    "package_version": f["packageVersion"],
                    "severity": f["severity"],
                    "cvss": f["cvss"],
                    "detail": f,
                }
                for f in findings
            ],
        )
    image.matched_generation = generation
    session.flush()


def findings_of(session: Session, image_ids: Sequence[int]) -> dict[int, list[Finding]]:
    """The findings of each image, most severe first."""
    out: dict[int, list[Finding]] = defaultdict(list)
    if not image_ids:
        return out
    stmt = (
        select(Finding)
        .where(Finding.image_id.in_(set(image_ids)))
        .order_by(Finding.image_id, Finding.cvss.desc().nulls_last(), Finding.vuln_id)
    )
    for finding in session.scalars(stmt):
        out[finding.image_id].append(finding)
    return out


def images_affected_by(vuln_id: str) -> Any:
    """Ids of the images with a finding of ``vuln_id``."""
    return select(Finding.image_id).where(Finding.vuln_id == vuln_id.upper())
