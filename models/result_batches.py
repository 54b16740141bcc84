"""Results written for many image scans at once: a sweep's batch, whose images are
mostly stored already, writes its tags, latest results and image rows with a few
statements per repository. Callers own the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, defer

from models.base import utcnow
from models.findings import lock_for_linking
from models.image_scans import ImageScan, chunks
from models.images import Image, Tag
from models.results import (
    InventoryLike,
    PlatformImageLike,
    ScanResult,
    record_found,
    upsert_image,
)

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
            stored = record_found(session, item, found, tag_digest, analyser_version)
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
            images[digest] = upsert_image(session, host, repo, platform_image)
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
