"""Scanning one image for a job: claim the item, ask the scanner, store what it found."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core import keys
from core.requester import HARBOR_SOURCE
from models import Image, ImageScan, ItemStatus, JobKind, JobStatus, image_scans, jobs, results
from models.db import transaction
from models.fencing import Fenced, finish_item, finish_job
from scanner.errors import ScanError, ScanStopped
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory
from scanner.registry.client import RegistryClient
from scanner.registry.images import PlatformImage, resolve_image
from scanner.registry.manifests import INDEX_TYPES
from worker import rematch
from worker.inventory import KnownImages, take_inventory
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Two scans of the same tag finishing at once collide on the "latest result"
# index; the loser simply writes again on top of the winner.
WRITE_TRIES = 3
WRITE_BACKOFF = 0.2  # seconds before the second try; doubled before each next one


def scan_item(
    rt: Runtime, item_id: int, attempt: int, *, stoppable: bool = True, pull_authorization: str = ""
) -> None:
    """Scan one item of a job. A stale or duplicate message returns without effect.
    ``pull_authorization`` replaces the specification's credential for this scan."""
    with transaction(rt.sessions) as session:
        item = image_scans.claim_item(session, item_id, attempt)
    if item is None:
        log.info("image_scan=%s attempt=%s is stale; skipped", item_id, attempt)
        return
    checkpoint = _stop_checkpoint(rt, item.job_id) if stoppable else _no_checkpoint
    try:
        checkpoint()
        found = _scan(rt, item, checkpoint, pull_authorization)
    except ScanStopped:
        _write(rt, item, attempt, ItemStatus.SKIPPED, None)
    except TagMismatch as exc:
        # A refusal, not a scan: the tag's results stay as they were.
        log.warning("image_scan=%s refused: %s", item.id, exc)
        _write(rt, item, attempt, ItemStatus.FAILED, str(exc), record=False)
    except ScanError as exc:
        log.warning("image_scan=%s failed: %s", item.id, exc)
        _write(rt, item, attempt, ItemStatus.FAILED, str(exc))
    else:
        _write(rt, item, attempt, ItemStatus.DONE, found)


def scan_on_demand(rt: Runtime, job_id: int, *, again: bool = False) -> None:
    """Run an on-demand job: its one image, with no stop checks (it cannot be stopped).

    A job runs only if it is still queued, so one that reached the queue twice runs
    once; ``again`` also takes a running one, which recovery handed back because its
    worker went silent."""
    statuses = (JobStatus.QUEUED, JobStatus.RUNNING) if again else (JobStatus.QUEUED,)
    with transaction(rt.sessions) as session:
        job = jobs.start_job(session, job_id, statuses)
        if job is None or job.kind is not JobKind.ON_DEMAND:
            return
        image_scans.reset_in_flight(session, job_id)
        handed = image_scans.queue_items(session, job_id, None, 1, None)
        from_harbor = job.source == HARBOR_SOURCE
    pull = rt.pull_authorization(job_id) if from_harbor else ""
    for item_id, attempt in handed:
        scan_item(rt, item_id, attempt, stoppable=False, pull_authorization=pull)
    with transaction(rt.sessions) as session:
        counts = image_scans.item_counts(session, job_id)
        failed = counts.get(ItemStatus.FAILED, 0) > 0
        finish_job(session, job_id, None, JobStatus.FAILED if failed else JobStatus.COMPLETED)
        if failed:
            jobs.append_job_error(session, job_id, _item_errors(session, job_id))
    if from_harbor:
        # Credentials given for this scan alone do not outlive it.
        rt.forget_pull_authorization(job_id)
    rt.admission.job_ended(job_id)


Found = list[tuple[PlatformImage, Inventory | None]]


def _scan(
    rt: Runtime, item: ImageScan, checkpoint: Callable[[], None], pull_authorization: str = ""
) -> Found:
    """Each platform image of the item, with its inventory (None: unchanged since the
    last scan by this analyser version, so nothing was downloaded for it)."""
    reference = item.digest or item.tag or "latest"
    known = KnownImages(rt, item.registry_host, item.repository)
    # Only the specification's os: a Linux scan leaves out the Windows images of an index.
    platforms = {item.os} if item.os else None
    with rt.registry_client(
        item.registry_url, item.credential_id, pull_authorization=pull_authorization
    ) as client:
        if item.tag and item.digest:
            _check_tag_points_at(client, item)
        images = resolve_image(
            client,
            item.repository,
            reference,
            checkpoint=checkpoint,
            platforms=platforms,
            known=known,
        )
        if not images:
            name = f"{item.registry_host}/{item.repository}:{reference}"
            if item.os:
                raise ScanError(
                    f"{name} has no {item.os} image, and its registry specification scans "
                    f"{item.os} images only (its os setting)"
                )
            raise ScanError(f"{name} has no platform image")
        found: Found = []
        for image in images:
            if image.digest in known.hits:
                found.append((image, None))  # unchanged: its stored inventory holds
            else:
                found.append(
                    (image, take_inventory(rt, client, item.repository, image, checkpoint))
                )
        return found


class TagMismatch(ScanError):
    """A tag and a digest asked for together that do not agree."""


def _check_tag_points_at(client: RegistryClient, item: ImageScan) -> None:
    """A tag and a digest asked for together must agree: the digest is the tag's, or one
    of the platform images of the index the tag names. Otherwise the result would be
    stored under a tag that never held the image."""
    tagged = client.head_manifest(item.repository, item.tag)
    if tagged.digest == item.digest:
        return
    if tagged.media_type in INDEX_TYPES:
        index = client.get_manifest(item.repository, item.tag)
        children = index.body.get("manifests")
        if isinstance(children, list) and any(
            isinstance(c, dict) and c.get("digest") == item.digest for c in children
        ):
            return
    raise TagMismatch(
        f"tag {item.tag} of {item.registry_host}/{item.repository} points at "
        f"{tagged.digest}, not at {item.digest}: ask for the tag or the digest alone"
    )


def _write(
    rt: Runtime,
    item: ImageScan,
    attempt: int,
    status: ItemStatus,
    found: Found | str | None,
    *,
    record: bool = True,
) -> None:
    """End the item with ``status``, storing what was found, or with ``found`` as its
    error (also shown as the tag's latest result, unless ``record`` is False)."""
    away: OperationalError | None = None
    for tries in range(WRITE_TRIES):
        try:
            with transaction(rt.sessions) as session:
                results.serialize_tag_writers(session, item)
                error = found if isinstance(found, str) else None
                finish_item(session, item, attempt, status, error)
                if isinstance(found, list):
                    first = found[0][0]
                    tag_digest = first.index_digest or first.digest
                    stored = results.record_results(
                        session, item, found, tag_digest, ANALYSER_VERSION
                    )
                    # Findings in the same transaction: a result is never seen without them.
                    for image_id in {r.image_id for r in stored if r.image_id is not None}:
                        rematch.match_image(session, session.get_one(Image, image_id))
                elif error is not None and record:
                    results.record_failure(session, item, error)
            return
        except IntegrityError as exc:
            # A concurrent writer won a race: the transaction was rolled back whole, so
            # writing again is safe.
            log.info("image_scan=%s writing again after: %s", item.id, exc.__class__.__name__)
        except OperationalError as exc:
            # A deadlock the database broke, or the database going away: wait a little.
            log.info("image_scan=%s writing again after: %s", item.id, exc.__class__.__name__)
            away = exc
            time.sleep(WRITE_BACKOFF * 2**tries)
        except Fenced as exc:
            log.warning("image_scan=%s result dropped: %s", item.id, exc)
            return
    if away is not None:
        # Still failing: the database is away. The task runs the job again once it is
        # back (nothing of this attempt was stored).
        raise away
    if status is not ItemStatus.FAILED:
        # The image must not stay "running" forever: end it failed, saying why.
        _write(rt, item, attempt, ItemStatus.FAILED, "could not store the scan result")
        return
    raise RuntimeError(f"image_scan={item.id}: could not store its result")


def _stop_checkpoint(rt: Runtime, job_id: int) -> Callable[[], None]:
    flag = keys.stop_flag(job_id)

    def checkpoint() -> None:
        if rt.redis.exists(flag):
            raise ScanStopped(f"scan {job_id} was stopped")

    return checkpoint


def _no_checkpoint() -> None:
    return None


def _item_errors(session: Session, job_id: int) -> str:
    items = image_scans.failed_items(session, job_id)
    return "\n".join(f"{i.repository}:{i.tag or i.digest}: {i.error}" for i in items)
