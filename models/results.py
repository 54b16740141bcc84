"""Scan results: what one image scan found for one platform image, with the history
kept and the current result of each tagged image marked; and the fleet queries that
read the current results. Callers own the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Select,
    String,
    Text,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, defer, mapped_column

from models.base import Base, utcnow
from models.findings import images_affected_by, lock_for_linking
from models.image_scans import ImageScan, chunks
from models.images import Image, ImagePackage, Tag, find_image, images_holding, set_image_packages


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
_Selected = TypeVar("_Selected", bound="Select[*tuple[Any, ...]]")


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
    return _record(session, item, found, tag_digest, analyser_version)


Scanned = tuple[ImageScan, Sequence[tuple[PlatformImageLike, InventoryLike | None]], str]


def record_many(session: Session, scanned: Sequence[Scanned], analyser_version: int) -> list[int]:
    """:func:`record_results` of many items, each (item, found, tag digest), with a few
    statements per repository rather than a few per item; the ids of the images stored.

    An item that brings a new inventory is stored the way one item is."""
    lock_for_linking(session)  # first, as in record_results
    image_ids: set[int] = set()
    plain: dict[tuple[str, str], list[Scanned]] = {}
    for entry in scanned:
        item, found, tag_digest = entry
        if any(inventory is not None for _image, inventory in found):
            stored = _record(session, item, found, tag_digest, analyser_version)
            image_ids.update(r.image_id for r in stored if r.image_id is not None)
        else:
            plain.setdefault((item.registry_host, item.repository), []).append(entry)
    for (host, repo), entries in plain.items():
        image_ids.update(_record_repository(session, host, repo, entries))
    return sorted(image_ids)


def _record_repository(session: Session, host: str, repo: str, entries: list[Scanned]) -> set[int]:
    """Tags, latest results and image rows of one repository's items, whose images are
    all stored already with their inventories."""
    tags = {item.tag: tag_digest for item, _found, tag_digest in entries if item.tag}
    _upsert_tags(session, host, repo, tags)
    names = sorted({item.tag for item, _found, _digest in entries})
    for chunk in chunks(names):
        session.execute(
            update(ScanResult)
            .where(
                ScanResult.registry_host == host,
                ScanResult.repository == repo,
                ScanResult.tag.in_(chunk),
                ScanResult.is_latest.is_(True),
            )
            .values(is_latest=False)
            .execution_options(synchronize_session=False)
        )
    images = _touch_images(
        session, host, repo, [image for _item, found, _d in entries for image, _inv in found]
    )
    now = utcnow()
    rows = [
        {
            "job_id": item.job_id,
            "image_scan_id": item.id,
            "image_id": images[found_image.digest].id,
            "os_distro": images[found_image.digest].os_distro,
            "os_distro_version": images[found_image.digest].os_distro_version,
            "registry_host": host,
            "repository": repo,
            "tag": item.tag,
            "digest": found_image.digest,
            "platform": images[found_image.digest].platform,
            "scanned_at": now,
            "err": "",
            "is_latest": True,
        }
        for item, found, _tag_digest in entries
        for found_image, _inventory in found
    ]
    if rows:
        session.execute(insert(ScanResult), rows)
    return {image.id for image in images.values()}


def _upsert_tags(session: Session, host: str, repo: str, tags: dict[str, str]) -> None:
    """Point each tag name at its digest, adding the tags not stored yet."""
    stored: dict[str, Tag] = {}
    for chunk in chunks(sorted(tags)):
        stmt = select(Tag).where(
            Tag.registry_host == host, Tag.repository == repo, Tag.name.in_(chunk)
        )
        stored.update((tag.name, tag) for tag in session.scalars(stmt))
    for name, digest in tags.items():
        tag = stored.get(name)
        if tag is None:
            session.add(Tag(registry_host=host, repository=repo, name=name, digest=digest))
        elif tag.digest != digest:
            tag.digest = digest


def _touch_images(
    session: Session, host: str, repo: str, found: Sequence[PlatformImageLike]
) -> dict[str, Image]:
    """The image rows of ``found`` by digest, their description brought up to date and
    marked scanned now (one statement for all, when nothing else changed)."""
    wanted = {image.digest: image for image in found}
    images: dict[str, Image] = {}
    for chunk in chunks(sorted(wanted)):
        stmt = (
            select(Image)
            .options(defer(Image.packages))
            .where(Image.registry_host == host, Image.repository == repo, Image.digest.in_(chunk))
        )
        images.update((image.digest, image) for image in session.scalars(stmt))
    for digest, platform_image in wanted.items():
        image = images.get(digest)
        if image is None or _described(image) != _description(platform_image):
            images[digest] = _upsert_image(session, host, repo, platform_image)
    ids = sorted(image.id for image in images.values())
    for some in chunks(ids):
        session.execute(
            update(Image)
            .where(Image.id.in_(some))
            .values(last_scanned=utcnow())
            .execution_options(synchronize_session=False)
        )
    return images


def _description(found: PlatformImageLike) -> tuple[Any, ...]:
    layers = [
        {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
        for layer in found.layers
    ]
    return (
        found.media_type,
        found.index_digest,
        found.config_digest,
        found.platform,
        found.os,
        found.architecture,
        _utc(found.created),
        found.size,
        layers,
    )


def _described(image: Image) -> tuple[Any, ...]:
    return (
        image.media_type,
        image.index_digest,
        image.config_digest,
        image.platform,
        image.os,
        image.architecture,
        _utc(image.created),
        image.size,
        image.layers,
    )


def _utc(moment: datetime | None) -> datetime | None:
    """A time comparable whether its database kept the zone (PostgreSQL) or not (SQLite)."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


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
    image = _upsert_image(session, registry_host, repository, found)
    _set_inventory(session, image, inventory, analyser_version)
    session.flush()
    return image


def _record(
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
        image = _upsert_image(session, item.registry_host, item.repository, platform_image)
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


def _upsert_image(
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


# -- reading ----------------------------------------------------------------------


RESULT_SORTS = {
    "scanTime": ScanResult.scanned_at,
    "registry": ScanResult.registry_host,
    "repository": ScanResult.repository,
    "repo": ScanResult.repository,
    "tag": ScanResult.tag,
    "id": ScanResult.digest,
}


@dataclass(frozen=True)
class ResultFilter:
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    image_id: str | None = None
    cve: str | None = None  # images with a finding of this vulnerability
    package: str | None = None  # images holding this package (by name or source name)
    package_version: str | None = None
    search: str | None = None  # a substring of the registry, repository or tag (any case)


def latest_results(
    session: Session,
    flt: ResultFilter,
    *,
    offset: int,
    limit: int,
    sort: str | None,
    reverse: bool,
) -> tuple[Sequence[tuple[ScanResult, Image | None]], int]:
    """The current result of each tagged image, one page of it, and the total count."""
    base = _filtered(select(ScanResult).where(ScanResult.is_latest.is_(True)), flt)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    keys = [RESULT_SORTS[sort]] if sort else []
    keys += [ScanResult.registry_host, ScanResult.repository, ScanResult.tag, ScanResult.platform]
    order = [k.desc() if reverse else k.asc() for k in keys]
    stmt = (
        _filtered(
            select(ScanResult, Image)
            .outerjoin(Image, ScanResult.image_id == Image.id)
            .where(ScanResult.is_latest.is_(True)),
            flt,
        )
        .order_by(*order)
        .offset(offset)
        .limit(limit)
    )
    return session.execute(stmt).all(), total


def images_of_job(session: Session, job_id: int) -> list[tuple[ScanResult, Image]]:
    """What a job's scans stored: each result with its image (platform images of an
    index each have one), in platform order; failed images have no image and are left
    out."""
    stmt = (
        select(ScanResult, Image)
        .join(Image, ScanResult.image_id == Image.id)
        .where(ScanResult.job_id == job_id)
        .order_by(ScanResult.platform, ScanResult.id)
    )
    return [(r, i) for r, i in session.execute(stmt)]


def latest_names(
    session: Session, flt: ResultFilter, *, offset: int, limit: int | None
) -> list[str]:
    """``REGISTRY/REPO:TAG`` of each image with a current result, once whatever its
    platforms, in name order; an untagged one is named by a digest (``REPO@DIGEST``)."""
    columns = (ScanResult.registry_host, ScanResult.repository, ScanResult.tag)
    stmt = (
        _filtered(
            select(*columns, func.min(ScanResult.digest)).where(ScanResult.is_latest.is_(True)),
            flt,
        )
        .group_by(*columns)
        .order_by(*columns)
        .offset(offset)
        .limit(limit)
    )
    return [
        f"{host}/{repo}:{tag}" if tag else f"{host}/{repo}@{digest}"
        for host, repo, tag, digest in session.execute(stmt)
    ]


def _filtered(stmt: _Selected, flt: ResultFilter) -> _Selected:
    if flt.search:
        stmt = stmt.where(
            or_(
                ScanResult.registry_host.icontains(flt.search, autoescape=True),
                ScanResult.repository.icontains(flt.search, autoescape=True),
                ScanResult.tag.icontains(flt.search, autoescape=True),
            )
        )
    if flt.registry is not None:
        stmt = stmt.where(ScanResult.registry_host == flt.registry)
    if flt.repository is not None:
        stmt = stmt.where(ScanResult.repository == flt.repository)
    if flt.tag is not None:
        stmt = stmt.where(ScanResult.tag == flt.tag)
    if flt.cve is not None:
        stmt = stmt.where(ScanResult.image_id.in_(images_affected_by(flt.cve)))
    if flt.package is not None:
        stmt = stmt.where(ScanResult.image_id.in_(images_holding(flt.package, flt.package_version)))
    if flt.image_id is not None:
        config_digest = select(Image.id).where(Image.config_digest == flt.image_id)
        stmt = stmt.where(
            or_(ScanResult.digest == flt.image_id, ScanResult.image_id.in_(config_digest))
        )
    return stmt


@dataclass(frozen=True)
class HeldPackage:
    """A package some current image holds, with where that image is tagged."""

    registry_host: str
    repository: str
    tag: str
    os_distro: str
    type: str
    version: str


def holders_of(session: Session, name: str) -> list[HeldPackage]:
    """Every tagged image whose latest result holds ``name`` (binary or source name)."""
    stmt = (
        select(ScanResult, Image.os_distro, ImagePackage.type, ImagePackage.version)
        .join(Image, ScanResult.image_id == Image.id)
        .join(ImagePackage, ImagePackage.image_id == Image.id)
        .where(ScanResult.is_latest.is_(True), ScanResult.tag != "")
        .where(or_(ImagePackage.name == name, ImagePackage.source_name == name))
    )
    return [
        HeldPackage(r.registry_host, r.repository, r.tag, distro, kind, version)
        for r, distro, kind, version in session.execute(stmt)
    ]


def affected_by(session: Session, vuln_id: str) -> list[tuple[str, str, str]]:
    """(registry host, repository, tag) of every current image with this finding."""
    stmt = (
        select(ScanResult.registry_host, ScanResult.repository, ScanResult.tag)
        .where(ScanResult.is_latest.is_(True), ScanResult.tag != "")
        .where(ScanResult.image_id.in_(images_affected_by(vuln_id)))
        .distinct()
    )
    return [(h, r, t) for h, r, t in session.execute(stmt)]
