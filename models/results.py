"""Scan results: what one image scan found for one platform image, with the history
kept and the current result of each tagged image marked; and the fleet queries that
read the current results. Callers own the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, utcnow
from models.findings import lock_for_linking
from models.image_scans import ImageScan
from models.images import Image, Tag, find_image, set_image_packages


class ScanResult(Base):
    """What one image scan found for one platform image. History is kept;
    ``is_latest`` marks the current result of each (registry host, repository, tag, platform)."""

    __tablename__ = "scan_results"
    __table_args__ = (
        Index("ix_scan_results_latest_order", "is_latest", "registry_host", "repository", "tag"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), index=True)
    image_scan_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_scans.id", ondelete="SET NULL"), index=True, default=None
    )
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), index=True, default=None
    )
    registry_host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(512))
    tag: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(100), default="", index=True)
    platform: Mapped[str] = mapped_column(String(64), default="")
    scanned_at: Mapped[datetime] = mapped_column(default=utcnow)
    err: Mapped[str] = mapped_column(Text, default="")
    os_distro: Mapped[str] = mapped_column(String(64), default="")
    os_distro_version: Mapped[str] = mapped_column(String(64), default="")
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)


# At most one current result per tagged platform image; concurrent writers of the
# same image (a sweep and an on-demand scan) collide here instead of both winning.
Index(
    "uq_scan_results_latest",
    ScanResult.registry_host,
    ScanResult.repository,
    ScanResult.tag,
    ScanResult.platform,
    unique=True,
    sqlite_where=text("is_latest"),
    postgresql_where=text("is_latest"),
)


# A SELECT of any columns: filtering keeps what it selects.


# -- writing ----------------------------------------------------------------------


class PlatformImageLike(Protocol):
    """What a scanner reports for one platform image (``scanner`` ``PlatformImage``)."""

    @property
    def digest(self) -> str: ...
    @property
    def media_type(self) -> str: ...
    @property
    def platform(self) -> str: ...
    @property
    def os(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def created(self) -> datetime | None: ...
    @property
    def size(self) -> int: ...
    @property
    def layers(self) -> Sequence[Any]: ...
    @property
    def config_digest(self) -> str: ...
    @property
    def index_digest(self) -> str | None: ...


class OSLike(Protocol):
    @property
    def distro(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def name(self) -> str: ...


class InventoryLike(Protocol):
    """What the layer analysis found in an image (``scanner`` ``Inventory``)."""

    @property
    def packages(self) -> Sequence[Any]: ...  # scanner Packages, each with to_json()
    @property
    def os(self) -> OSLike: ...


def serialize_tag_writers(session: Session, item: ImageScan) -> None:
    """Make writers of the same tag's results take turns until commit (PostgreSQL).

    Concurrent scans of one tag (a flood of on-demand scans of one image, a sweep and
    an on-demand scan) otherwise lock the image row and the latest-result index in
    different orders and deadlock. SQLite runs one writer at a time anyway.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    name = f"{item.registry_host}/{item.repository}:{item.tag}@{item.digest}"
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def record_results(
    session: Session,
    item: ImageScan,
    found: Sequence[tuple[PlatformImageLike, InventoryLike | None]],
    tag_digest: str,
    analyser_version: int,
) -> list[ScanResult]:
    """Store what a scan of ``item`` found: images with their inventories (None: the
    stored one still holds) made by ``analyser_version``, the tag, and the new latest
    results."""
    # Before any image row is written: re-matching writes image rows too, holding this
    # lock alone, so taking it later could wait on a holder waiting on us.
    lock_for_linking(session)
    return record_found(session, item, found, tag_digest, analyser_version)


def store_image(
    session: Session,
    registry_host: str,
    repository: str,
    found: PlatformImageLike,
    inventory: InventoryLike,
    analyser_version: int,
) -> Image:
    """Store an image with its new inventory ahead of the results that will name it, so
    that others scanning the same image meanwhile find it stored."""
    lock_for_linking(session)  # first, as in record_results
    image = upsert_image(session, registry_host, repository, found)
    _set_inventory(session, image, inventory, analyser_version)
    session.flush()
    return image


def record_found(
    session: Session,
    item: ImageScan,
    found: Sequence[tuple[PlatformImageLike, InventoryLike | None]],
    tag_digest: str,
    analyser_version: int,
) -> list[ScanResult]:
    if item.tag:
        _upsert_tag(session, item, tag_digest)
    _retire_latest(session, item)
    results = []
    for platform_image, inventory in found:
        image = upsert_image(session, item.registry_host, item.repository, platform_image)
        if inventory is not None:
            _set_inventory(session, image, inventory, analyser_version)
        results.append(_add_result(session, item, image=image, platform=image.platform))
    session.flush()
    return results


def _set_inventory(
    session: Session, image: Image, inventory: InventoryLike, analyser_version: int
) -> None:
    image.os_distro = inventory.os.distro
    image.os_distro_version = inventory.os.version
    image.os_distro_release = inventory.os.release
    image.distro = inventory.os.name
    image.packages = [p.to_json() for p in inventory.packages]
    image.analyser_version = analyser_version
    image.matched_generation = None  # a new inventory: linked to its package versions anew
    set_image_packages(session, image.id, image.packages)


def record_failure(session: Session, item: ImageScan, err: str) -> ScanResult:
    """An image that could not be scanned still gets a latest result carrying ``err``."""
    _retire_latest(session, item)
    result = _add_result(session, item, image=None, platform="", err=err)
    session.flush()
    return result


def _retire_latest(session: Session, item: ImageScan) -> None:
    session.execute(
        update(ScanResult)
        .where(
            ScanResult.registry_host == item.registry_host,
            ScanResult.repository == item.repository,
            ScanResult.tag == item.tag,
            ScanResult.is_latest.is_(True),
        )
        .values(is_latest=False)
    )


def _add_result(
    session: Session, item: ImageScan, *, image: Image | None, platform: str, err: str = ""
) -> ScanResult:
    result = ScanResult(
        job_id=item.job_id,
        image_scan_id=item.id,
        image_id=image.id if image else None,
        os_distro=image.os_distro if image else "",
        os_distro_version=image.os_distro_version if image else "",
        registry_host=item.registry_host,
        repository=item.repository,
        tag=item.tag,
        digest=image.digest if image else item.digest,
        platform=platform,
        scanned_at=utcnow(),
        err=err,
        is_latest=True,
    )
    session.add(result)
    return result


def _upsert_tag(session: Session, item: ImageScan, digest: str) -> None:
    tag = session.scalar(
        select(Tag).where(
            Tag.registry_host == item.registry_host,
            Tag.repository == item.repository,
            Tag.name == item.tag,
        )
    )
    if tag is None:
        session.add(
            Tag(
                registry_host=item.registry_host,
                repository=item.repository,
                name=item.tag,
                digest=digest,
            )
        )
    elif tag.digest != digest:
        tag.digest = digest


def upsert_image(
    session: Session, registry_host: str, repository: str, found: PlatformImageLike
) -> Image:
    image = find_image(session, registry_host, repository, found.digest)
    if image is None:
        image = Image(registry_host=registry_host, repository=repository, digest=found.digest)
        session.add(image)
    image.media_type = found.media_type
    image.index_digest = found.index_digest
    image.config_digest = found.config_digest
    image.platform = found.platform
    image.os = found.os
    image.architecture = found.architecture
    image.created = found.created
    image.size = found.size
    image.layers = [
        {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
        for layer in found.layers
    ]
    image.last_scanned = utcnow()
    session.flush()
    return image
