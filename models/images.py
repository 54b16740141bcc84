"""Images (a manifest digest in a repository), the tags pointing at them, and the
packages each image holds. Callers own the transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    UniqueConstraint,
    delete,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, defer, mapped_column

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
    # Vulnerability data generation (models.vuln_records.VulnDbState) the findings were
    # matched against; None until matched.
    matched_generation: Mapped[int | None] = mapped_column(BigInteger, default=None, index=True)
    # Its findings counted by severity (models.findings keeps them current); total counts
    # unknown severities too.
    vulns_critical: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vulns_high: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vulns_medium: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vulns_low: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vulns_total: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
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


def find_image(session: Session, registry_host: str, repository: str, digest: str) -> Image | None:
    stmt = select(Image).where(
        Image.registry_host == registry_host,
        Image.repository == repository,
        Image.digest == digest,
    )
    return session.scalar(stmt)


def find_described(
    session: Session, registry_host: str, repository: str, digest: str
) -> Image | None:
    """:func:`find_image` without its inventory: what describing it needs, cheaply."""
    stmt = (
        select(Image)
        .options(defer(Image.packages))
        .where(
            Image.registry_host == registry_host,
            Image.repository == repository,
            Image.digest == digest,
        )
    )
    return session.scalar(stmt)


def described_by_tags(
    session: Session, registry_host: str, repository: str, tags: Sequence[str], analyser: int
) -> list[Image]:
    """The images (without their inventories) the tags named pointed at when last seen,
    and the platform images of those that are indexes, as inventoried by ``analyser``:
    what a sweep will most likely meet again, read in one statement."""
    if not tags:
        return []
    pointed = select(Tag.digest).where(
        Tag.registry_host == registry_host,
        Tag.repository == repository,
        Tag.name.in_(tags),
    )
    stmt = (
        select(Image)
        .options(defer(Image.packages))
        .where(
            Image.registry_host == registry_host,
            Image.repository == repository,
            Image.analyser_version == analyser,
            or_(Image.digest.in_(pointed), Image.index_digest.in_(pointed)),
        )
    )
    return list(session.scalars(stmt))


def set_image_packages(session: Session, image_id: int, packages: Sequence[dict[str, Any]]) -> None:
    """Replace the per-package rows of an image's inventory."""
    session.execute(delete(ImagePackage).where(ImagePackage.image_id == image_id))
    session.add_all(
        ImagePackage(
            image_id=image_id,
            type=p["type"],
            name=p["name"],
            version=p["version"],
            source_name=p.get("source_name") or "",
        )
        for p in packages
    )


def images_holding(name: str, version: str | None) -> Select[int]:
    """Ids of the images holding package ``name`` (binary or source name)."""
    stmt = select(ImagePackage.image_id).where(
        or_(ImagePackage.name == name, ImagePackage.source_name == name)
    )
    return stmt.where(ImagePackage.version == version) if version is not None else stmt


def matched_before(generation: int, findings_generation: int) -> ColumnElement[bool]:
    """Images with an inventory whose findings predate ``generation``: never linked to
    their package versions, or linked before it while the findings are not all current
    (``findings_generation``, ``models.vuln_records``)."""
    never = Image.matched_generation.is_(None)
    if findings_generation >= generation:
        return Image.analyser_version.is_not(None) & never
    return Image.analyser_version.is_not(None) & or_(never, Image.matched_generation < generation)


def tags_of(session: Session, images: Sequence[Image]) -> dict[int, list[Tag]]:
    """For each image, the tags now pointing at it or at the index it belongs to."""
    if not images:
        return {}
    digests = {d for i in images for d in (i.digest, i.index_digest) if d}
    repos = {(i.registry_host, i.repository) for i in images}
    stmt = select(Tag).where(
        Tag.digest.in_(digests), Tag.repository.in_({repo for _h, repo in repos})
    )
    by_key: dict[tuple[str, str, str], list[Tag]] = defaultdict(list)
    for tag in session.scalars(stmt.order_by(Tag.name)):
        by_key[(tag.registry_host, tag.repository, tag.digest)].append(tag)
    out: dict[int, list[Tag]] = {}
    for image in images:
        found = by_key[(image.registry_host, image.repository, image.digest)]
        if image.index_digest:
            found = found + by_key[(image.registry_host, image.repository, image.index_digest)]
        out[image.id] = found
    return out
