"""Vulnerability data (OSV records) and what it says about each stored image.

``VulnRecord`` keeps each OSV record whole; ``VulnPackage`` indexes the packages it
affects so matching only reads the records that can concern a package. Findings are
derived data: re-matching an image replaces its findings, never its inventory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class VulnSource(Base):
    """A configured place vulnerability data comes from: a file, a folder, a URL."""

    __tablename__ = "vuln_sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    location: Mapped[str] = mapped_column(String(1024), unique=True)
    etag: Mapped[str] = mapped_column(String(255), default="")
    last_modified: Mapped[str] = mapped_column(String(64), default="")
    refreshed_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    records: Mapped[int] = mapped_column(Integer, default=0)


class VulnRecord(Base):
    __tablename__ = "vuln_records"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # OSV id
    modified: Mapped[datetime] = mapped_column()
    published: Mapped[datetime | None] = mapped_column(default=None)
    withdrawn: Mapped[datetime | None] = mapped_column(default=None)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("vuln_sources.id", ondelete="SET NULL"), default=None, index=True
    )
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class VulnPackage(Base):
    """One (ecosystem, package) a record affects, e.g. ("Debian:12", "openssl")."""

    __tablename__ = "vuln_packages"
    __table_args__ = (Index("ix_vuln_packages_ecosystem_name", "ecosystem", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    record_id: Mapped[str] = mapped_column(
        ForeignKey("vuln_records.id", ondelete="CASCADE"), index=True
    )
    ecosystem: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(512))


class VulnChange(Base):
    """An (ecosystem, package) whose records an import added, replaced or withdrew.

    ``generation`` is the data generation the change took effect in, or NULL while the
    import writing it is still running (the import that bumps the generation next claims
    it). An image's findings for the packages a change does not name are the same after
    it, so re-matching matches again only the packages it names.
    """

    __tablename__ = "vuln_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    ecosystem: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(512))


class ImagePackage(Base):
    """The inventory of an image, one row per package, for fleet queries by package."""

    __tablename__ = "image_packages"
    __table_args__ = (Index("ix_image_packages_name_version", "name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(512))
    version: Mapped[str] = mapped_column(String(255))
    source_name: Mapped[str] = mapped_column(String(512), default="")


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


class VulnDbState(Base):
    """One row: a counter bumped whenever the vulnerability data changes. An image whose
    ``matched_generation`` is older is re-matched."""

    __tablename__ = "vulndb_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(default=None)
