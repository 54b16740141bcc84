"""Scanning one image for a job: claim the item, ask the scanner, store what it found."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core import keys
from core.logs import log_context
from core.requester import HARBOR_SOURCE
from models import (
    Image,
    ImageScan,
    ItemStatus,
    JobKind,
    JobStatus,
    image_scans,
    jobs,
    results,
    vuln_records,
)
from models.db import transaction
from models.fencing import Fenced, finish_item, finish_job
from models.images import find_image
from scanner.errors import ScanError, ScanStopped
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory
from scanner.registry.client import RegistryClient
from scanner.registry.images import PlatformImage, resolve_image
from scanner.registry.manifests import INDEX_TYPES
from worker import rematch
from worker.inventory import KnownImages, take_inventory
from worker.runtime import Runtime
from worker.telemetry import image_scan

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
    checkpoint = stop_checkpoint(rt, item.job_id) if stoppable else _no_checkpoint
    name = f"{item.registry_host}/{item.repository}:{item.tag or item.digest}"
    kind = "regular" if stoppable else "on-demand"
    with log_context(job=item.job_id, image=name), image_scan(kind) as outcome:
        try:
            checkpoint()
            found = _scan(rt, item, checkpoint, pull_authorization)
        except ScanStopped:
            outcome.skipped()
            _write(rt, item, attempt, ItemStatus.SKIPPED, None)
        except TagMismatch as exc:
            # A refusal, not a scan: the tag's results stay as they were.
            outcome.failed(exc)
            log.warning("image_scan=%s refused: %s", item.id, exc)
            _write(rt, item, attempt, ItemStatus.FAILED, str(exc), record=False)
        except ScanError as exc:
            outcome.failed(exc)
            log.warning("image_scan=%s failed: %s", item.id, exc)
            _write(rt, item, attempt, ItemStatus.FAILED, str(exc))
        else:
            _write(rt, item, attempt, ItemStatus.DONE, found)
            log.info("image_scan=%s scanned: %d platform images", item.id, len(found))


# What the database and Redis raise while they are away or restarting.
SERVICES_AWAY = (OperationalError, InterfaceError, RedisError)


class Interrupted(Exception):
    """An on-demand run stopped because the database or Redis went away; run the job
    again, resuming ``attempt`` (None: it never started)."""

    def __init__(self, job_id: int, attempt: int | None) -> None:
        super().__init__(f"job {job_id} interrupted on attempt {attempt}")
        self.job_id = job_id
        self.attempt = attempt


def scan_on_demand(rt: Runtime, job_id: int, *, resume: int | None = None) -> bool:
    """Run an on-demand job: its one image, with no stop checks (it cannot be stopped).
    False when there was nothing to run.

    A job runs only if it is still queued, so one that reached the queue twice runs
    once; ``resume`` also takes up the run on that attempt (see ``jobs.start_job``).
    Raises :class:`Interrupted` when the database or Redis went away meanwhile."""
    attempt = resume
    try:
        with transaction(rt.sessions) as session:
            job = jobs.start_job(session, job_id, resume)
            if job is None or job.kind is not JobKind.ON_DEMAND:
                return False
            attempt = job.attempts
            team, target = job.team, job.target_name
            from_harbor = job.source == HARBOR_SOURCE
            image_scans.reset_in_flight(session, job_id)
            handed = image_scans.queue_items(session, job_id, None, 1, None)
        pull = rt.pull_authorization(job_id) if from_harbor else ""
        with log_context(job=job_id, team=team, image=target):
            _run_on_demand(rt, job_id, handed, pull)
        if from_harbor:
            # Credentials given for this scan alone do not outlive it.
            rt.forget_pull_authorization(job_id)
    except SERVICES_AWAY as exc:
        raise Interrupted(job_id, attempt) from exc
    return True


def _run_on_demand(
    rt: Runtime, job_id: int, handed: list[tuple[int, int]], pull_authorization: str
) -> None:
    for item_id, item_attempt in handed:
        scan_item(rt, item_id, item_attempt, stoppable=False, pull_authorization=pull_authorization)
    with transaction(rt.sessions) as session:
        counts = image_scans.item_counts(session, job_id)
        failed = counts.get(ItemStatus.FAILED, 0) > 0
        finish_job(session, job_id, None, JobStatus.FAILED if failed else JobStatus.COMPLETED)
        if failed:
            jobs.append_job_error(session, job_id, _item_errors(session, job_id))
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
            check_tag_points_at(client, item)
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


def check_tag_points_at(client: RegistryClient, item: ImageScan) -> None:
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
    if isinstance(found, list):
        bring_current(rt, item, found)
    stale: list[int] = []
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
                        image = session.get_one(Image, image_id)
                        stale = rematch.match_image(session, image)
                elif error is not None and record:
                    results.record_failure(session, item, error)
            if stale:  # the data changed since bring_current: the image follows it now
                rematch.refresh(rt.sessions, stale)
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


def bring_current(rt: Runtime, item: ImageScan, found: Found) -> None:
    """Match again, before the result is stored, the package versions its images hold
    that the data changed for since their match (an import came, and the re-match has
    not reached them yet): a result is never stored with findings older than the data
    it was scanned under."""
    refs: set[rematch.PackageRef] = set()
    image_ids: list[int] = []
    with rt.sessions() as session:
        generation = vuln_records.current_generation(session)
        if vuln_records.findings_generation(session) >= generation:
            return  # every stored finding is current
        for platform_image, inventory in found:
            if inventory is not None:
                packages = [p.to_json() for p in inventory.packages]
                os = inventory.os
                refs |= rematch.inventory_refs(os.distro, os.version, os.name, packages)
                continue
            known = find_image(session, item.registry_host, item.repository, platform_image.digest)
            if known is not None and known.matched_generation is not None:
                image_ids.append(known.id)
        if not refs and not image_ids:
            return
        stale = rematch.stale_among(session, refs, image_ids)
    if stale:
        rematch.refresh(rt.sessions, stale)


def stop_checkpoint(rt: Runtime, job_id: int) -> Callable[[], None]:
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
