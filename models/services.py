"""Named state changes of jobs and image scans. Callers own the transaction.

Writes made on behalf of a regular scan are *fenced*: they first touch the job
row under the caller's fencing token, and the caller rolls back when that
matches nothing, because a newer lease holder has taken the job over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select, text, true, update
from sqlalchemy.orm import Session

from models import vulndb
from models.base import utcnow
from models.images import Image, Tag, find_image
from models.jobs import (
    ACTIVE_STATUSES,
    REGULAR_KINDS,
    ImageScan,
    ItemStatus,
    JobKind,
    JobStatus,
    ScanJob,
    ScanResult,
)

IN_FLIGHT = (ItemStatus.QUEUED, ItemStatus.RUNNING)


class Fenced(Exception):
    """A write was refused: the caller no longer holds the job's lease."""


# -- jobs ---------------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    kind: JobKind,
    requested_by: str,
    source: str,
    target: dict[str, Any] | None = None,
    wait: bool = False,
    publish_now: bool = True,
    team: str = "",
    callback_url: str = "",
) -> ScanJob:
    now = utcnow()
    job = ScanJob(
        kind=kind,
        status=JobStatus.QUEUED,
        requested_by=requested_by,
        source=source,
        target=target,
        wait=wait,
        team=team,
        callback_url=callback_url,
        created_at=now,
        published_at=now if publish_now else None,
    )
    session.add(job)
    session.flush()
    return job


def active_regular_jobs(session: Session) -> Sequence[ScanJob]:
    """Regular jobs queued, running or stopping, oldest first."""
    stmt = (
        select(ScanJob)
        .where(ScanJob.kind.in_(REGULAR_KINDS), ScanJob.status.in_(ACTIVE_STATUSES))
        .order_by(ScanJob.id)
    )
    return session.scalars(stmt).all()


def any_regular_waiting(session: Session) -> bool:
    """Whether a regular job waits for the slot (queued, not yet published)."""
    stmt = select(ScanJob.id).where(
        ScanJob.kind.in_(REGULAR_KINDS),
        ScanJob.status.in_(ACTIVE_STATUSES),
        ScanJob.published_at.is_(None),
    )
    return session.scalar(stmt.limit(1)) is not None


def active_on_demand(session: Session, team: str) -> int:
    """On-demand jobs of a team that are waiting or running."""
    stmt = select(func.count()).where(
        ScanJob.team == team,
        ScanJob.kind == JobKind.ON_DEMAND,
        ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
    )
    return session.scalar(stmt) or 0


def mark_published(session: Session, job_id: int) -> bool:
    """Claim the right to publish a waiting job; False if someone else did."""
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.published_at.is_(None))
        .values(published_at=utcnow())
    )
    return session.execute(stmt).rowcount == 1


def claim_regular(session: Session, job_id: int, token: int) -> ScanJob | None:
    """Take a regular job over under a new fencing token (first start or resume)."""
    now = utcnow()
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.status.in_(ACTIVE_STATUSES))
        .values(
            fencing_token=token,
            attempts=ScanJob.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(ScanJob.started_at, now),
            published_at=func.coalesce(ScanJob.published_at, now),
        )
    )
    if session.execute(stmt).rowcount != 1:
        return None
    job = session.get(ScanJob, job_id, populate_existing=True)
    assert job is not None
    if job.status is JobStatus.QUEUED:
        job.status = JobStatus.RUNNING
    # Items handed to the previous holder may be lost with it; they are redone under
    # this token, and whatever the old holder still writes is refused.
    reset_in_flight(session, job_id)
    return job


def reset_in_flight(session: Session, job_id: int) -> None:
    """Items queued or running go back to pending, to be handed out again."""
    session.execute(
        update(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(IN_FLIGHT))
        .values(status=ItemStatus.PENDING)
    )


def fence(session: Session, job_id: int, token: int | None) -> None:
    """Touch the job's heartbeat under ``token``; raise :class:`Fenced` if not the holder.

    On PostgreSQL this also row-locks the job until commit, so a takeover waits
    for a write in progress instead of interleaving with it.
    """
    stmt = update(ScanJob).where(ScanJob.id == job_id).values(heartbeat_at=utcnow())
    if token is not None:
        stmt = stmt.where(ScanJob.fencing_token == token)
    if session.execute(stmt).rowcount != 1:
        raise Fenced(f"job {job_id}: lease token {token} is no longer current")


def request_stop(session: Session, job_id: int) -> None:
    session.execute(
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(status=JobStatus.STOPPING)
    )


def start_job(session: Session, job_id: int) -> ScanJob | None:
    """Claim a queued on-demand job, or one whose worker went silent."""
    now = utcnow()
    stmt = (
        update(ScanJob)
        .where(ScanJob.id == job_id, ScanJob.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(
            status=JobStatus.RUNNING,
            attempts=ScanJob.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(ScanJob.started_at, now),
        )
    )
    if session.execute(stmt).rowcount != 1:
        return None
    return session.get(ScanJob, job_id, populate_existing=True)


def finish_job(
    session: Session, job_id: int, token: int | None, status: JobStatus, error: str | None = None
) -> None:
    """End a job with its final counts, under its fencing token."""
    fence(session, job_id, token)
    counts = item_counts(session, job_id)
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "images_total": sum(counts.values()),
        "images_scanned": counts.get(ItemStatus.DONE, 0),
        "images_failed": counts.get(ItemStatus.FAILED, 0),
        "images_skipped": counts.get(ItemStatus.SKIPPED, 0),
    }
    if error is not None:
        values["error"] = error
    session.execute(update(ScanJob).where(ScanJob.id == job_id).values(**values))


def append_job_error(session: Session, job_id: int, message: str) -> None:
    job = session.get(ScanJob, job_id)
    if job is not None:
        job.error = f"{job.error}\n{message}" if job.error else message


def stale_jobs(session: Session, statuses: Iterable[JobStatus], older_than: datetime) -> list[int]:
    stmt = select(ScanJob.id).where(
        ScanJob.status.in_(tuple(statuses)),
        func.coalesce(ScanJob.heartbeat_at, ScanJob.published_at, ScanJob.created_at) < older_than,
    )
    return list(session.scalars(stmt))


def touch_if_unchanged(session: Session, job_id: int, seen: datetime | None) -> bool:
    """Claim a stale job for re-publishing: only one reaper wins."""
    cond = ScanJob.heartbeat_at.is_(None) if seen is None else ScanJob.heartbeat_at == seen
    stmt = update(ScanJob).where(ScanJob.id == job_id, cond).values(heartbeat_at=utcnow())
    return session.execute(stmt).rowcount == 1


# -- image scans (the items of a job) --------------------------------------------------


def add_items(session: Session, job_id: int, items: Iterable[dict[str, Any]]) -> int:
    """Record discovered images as pending, skipping any the job already has."""
    seen = set(
        session.execute(
            select(
                ImageScan.registry_host, ImageScan.repository, ImageScan.tag, ImageScan.digest
            ).where(ImageScan.job_id == job_id)
        )
    )
    added = 0
    for item in items:
        key = (item["registry_host"], item["repository"], item["tag"], item["digest"])
        if key in seen:
            continue
        seen.add(key)
        session.add(ImageScan(job_id=job_id, status=ItemStatus.PENDING, **item))
        added += 1
    session.flush()
    return added


def add_target(session: Session, job: ScanJob, **fields: Any) -> None:
    """The one image of a single-image job: discovered as soon as the job exists."""
    session.add(ImageScan(job_id=job.id, status=ItemStatus.PENDING, **fields))
    job.images_total = 1
    job.discovered_at = utcnow()
    session.flush()


def item_counts(session: Session, job_id: int) -> dict[ItemStatus, int]:
    stmt = (
        select(ImageScan.status, func.count())
        .where(ImageScan.job_id == job_id)
        .group_by(ImageScan.status)
    )
    return {status: n for status, n in session.execute(stmt)}


def in_flight_by_spec(session: Session, job_id: int) -> dict[int, int]:
    stmt = (
        select(ImageScan.spec_position, func.count())
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(IN_FLIGHT))
        .group_by(ImageScan.spec_position)
    )
    return {pos: n for pos, n in session.execute(stmt)}


def pending_by_spec(session: Session, job_id: int) -> dict[int, int]:
    stmt = (
        select(ImageScan.spec_position, func.count())
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.PENDING)
        .group_by(ImageScan.spec_position)
    )
    return {pos: n for pos, n in session.execute(stmt)}


def queue_items(
    session: Session, job_id: int, spec_position: int | None, limit: int, token: int | None
) -> list[tuple[int, int]]:
    """Mark up to ``limit`` pending items queued; return their (id, attempt) pairs."""
    ids = session.scalars(
        select(ImageScan.id)
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.PENDING)
        .where(true() if spec_position is None else ImageScan.spec_position == spec_position)
        .order_by(ImageScan.id)
        .limit(limit)
    ).all()
    claimed: list[tuple[int, int]] = []
    for item_id in ids:
        item = session.get(ImageScan, item_id)
        assert item is not None
        item.status = ItemStatus.QUEUED
        item.fence = token
        item.attempts += 1
        item.queued_at = utcnow()
        claimed.append((item.id, item.attempts))
    session.flush()
    return claimed


def requeue_stuck_items(session: Session, job_id: int, older_than: datetime) -> int:
    """Items handed out so long ago that their worker must be gone go back to pending."""
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.job_id == job_id,
            ImageScan.status.in_(IN_FLIGHT),
            ImageScan.queued_at < older_than,
        )
        .values(status=ItemStatus.PENDING)
    )
    return session.execute(stmt).rowcount


def claim_item(session: Session, item_id: int, attempt: int) -> ImageScan | None:
    """Start an item, unless this message is stale (an older attempt of it)."""
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.id == item_id,
            ImageScan.status == ItemStatus.QUEUED,
            ImageScan.attempts == attempt,
        )
        .values(status=ItemStatus.RUNNING, started_at=utcnow())
    )
    if session.execute(stmt).rowcount != 1:
        return None
    return session.get(ImageScan, item_id, populate_existing=True)


def finish_item(
    session: Session, item: ImageScan, attempt: int, status: ItemStatus, error: str | None = None
) -> None:
    """End an item; raise :class:`Fenced` if it was handed to someone else meanwhile."""
    fence(session, item.job_id, item.fence)
    stmt = (
        update(ImageScan)
        .where(
            ImageScan.id == item.id,
            ImageScan.attempts == attempt,
            ImageScan.status == ItemStatus.RUNNING,
        )
        .values(status=status, error=error, finished_at=utcnow())
    )
    if session.execute(stmt).rowcount != 1:
        raise Fenced(f"image scan {item.id}: attempt {attempt} is no longer current")
    counter = {
        ItemStatus.DONE: ScanJob.images_scanned,
        ItemStatus.FAILED: ScanJob.images_failed,
        ItemStatus.SKIPPED: ScanJob.images_skipped,
    }.get(status)
    if counter is not None:
        session.execute(
            update(ScanJob).where(ScanJob.id == item.job_id).values({counter: counter + 1})
        )


def skip_items(session: Session, job_id: int, statuses: Iterable[ItemStatus]) -> int:
    stmt = (
        update(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status.in_(tuple(statuses)))
        .values(status=ItemStatus.SKIPPED, finished_at=utcnow())
    )
    return session.execute(stmt).rowcount


def set_total(session: Session, job_id: int) -> None:
    total = session.scalar(select(func.count()).where(ImageScan.job_id == job_id)) or 0
    session.execute(
        update(ScanJob)
        .where(ScanJob.id == job_id)
        .values(images_total=total, discovered_at=utcnow())
    )


# -- results ------------------------------------------------------------------------


class PlatformImageLike(Protocol):
    """What a scanner reports for one platform image (see scanner.images.PlatformImage)."""

    digest: str
    media_type: str
    platform: str
    os: str
    architecture: str
    created: datetime | None
    size: int
    layers: list[Any]
    config_digest: str
    index_digest: str | None


class OSLike(Protocol):
    distro: str
    version: str
    release: str
    name: str


class InventoryLike(Protocol):
    """What the layer analysis found in an image (see scanner.layers.Inventory)."""

    packages: Sequence[Any]  # scanner.packages.Package, each with to_json()
    os: OSLike


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
    if item.tag:
        _upsert_tag(session, item, tag_digest)
    _retire_latest(session, item)
    results = []
    for platform_image, inventory in found:
        image = _upsert_image(session, item, platform_image)
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
    vulndb.set_image_packages(session, image.id, image.packages)


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


def _upsert_image(session: Session, item: ImageScan, found: PlatformImageLike) -> Image:
    image = find_image(session, item.registry_host, item.repository, found.digest)
    if image is None:
        image = Image(
            registry_host=item.registry_host, repository=item.repository, digest=found.digest
        )
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


def older_than(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
