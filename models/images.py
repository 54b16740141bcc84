"""Images (a manifest digest in a repository) and the tags pointing at them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("registry_host", "repository", "digest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    registry_host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(100))
    media_type: Mapped[str] = mapped_column(String(128), default="")
    # The index (manifest list) this platform image was reached through, if any.
    index_digest: Mapped[str | None] = mapped_column(String(100), default=None, index=True)
    config_digest: Mapped[str] = mapped_column(String(100), default="", index=True)
    platform: Mapped[str] = mapped_column(String(64), default="")
    os: Mapped[str] = mapped_column(String(32), default="")
    architecture: Mapped[str] = mapped_column(String(32), default="")
    created: Mapped[datetime | None] = mapped_column(default=None)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # [{"digest", "size", "mediaType"}] in manifest order.
    layers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The inventory: what the image holds, merged across its layers.
    os_distro: Mapped[str] = mapped_column(String(64), default="")
    os_distro_version: Mapped[str] = mapped_column(String(64), default="")
    os_distro_release: Mapped[str] = mapped_column(String(64), default="")
    distro: Mapped[str] = mapped_column(String(255), default="")
    # [{"type", "name", "version", "sourceName", "sourceVersion", "path", "layer"}]
    packages: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Analyser version the inventory was made with; None until analysed.
    analyser_version: Mapped[int | None] = mapped_column(Integer, default=None)
    # Vulnerability data generation (models.vulns.VulnDbState) the findings were
    # matched against; None until matched.
    matched_generation: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_scanned: Mapped[datetime] = mapped_column(default=utcnow)


class Tag(Base):
    """A tag as last seen: the digest it pointed at (a manifest or an index)."""

    __tablename__ = "tags"
    __table_args__ = (
        UniqueConstraint("registry_host", "repository", "name"),
        Index("ix_tags_registry_host_repository_digest", "registry_host", "repository", "digest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    registry_host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(255))
    digest: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def find_image(session: Session, registry_host: str, repository: str, digest: str) -> Image | None:
    stmt = select(Image).where(
        Image.registry_host == registry_host,
        Image.repository == repository,
        Image.digest == digest,
    )
    return session.scalar(stmt)
