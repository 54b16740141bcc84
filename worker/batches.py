"""A batch of a sweep's images: one task scans them one after the other and writes what
it found for many of them in one transaction.

An image whose digest did not change costs one manifest request and its share of a
batched write. An image new to its repository (a manifest digest not stored yet) is
described and inventoried once per sweep, however many tags point at it: the batch that
meets it first holds its lock (``core.keys.image_lock``) and stores it at once, ahead of
any tag's result; other tags, in this batch or another, find it stored and fetch
nothing of it.

Each item still ends on its own (its status, error and count, fenced as before); only
the transactions are shared. A stop ends the batch at its next checkpoint: the items it
had not reached end skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, OperationalError

from core import keys
from core.logs import log_context
from models import Image, ImageScan, ItemStatus, image_scans, results, vuln_records
from models import images as images_store
from models.db import transaction
from models.fencing import Fenced, fence, finish_items
from models.image_scans import chunks
from scanner.errors import ScanError, ScanStopped
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory
from scanner.registry.images import PlatformImage, resolve_image
from worker import regular, rematch
from worker.images import (
    SERVICES_AWAY,
    WRITE_BACKOFF,
    WRITE_TRIES,
    Found,
    TagMismatch,
    bring_current,
    check_tag_points_at,
    stop_checkpoint,
)
from worker.inventory import KnownImages, LayerCache, stored_platform_image, take_inventory
from worker.runtime import Runtime
from worker.telemetry import image_scan

log = logging.getLogger(__name__)

# How long a batch waits for another to finish describing an image before it describes
# the image itself: a holder is normally quick, and two batches each waiting on a lock
# the other holds (two indexes listing shared images in different orders) must not wait
# for ever.
IMAGE_WAIT_SECONDS = 60.0


# The stop flag is read before a registry request at most this often, once for all the
# batches of a sweep this process runs: an unchanged image is a single request, and a
# Redis round trip for each would cost about as much.
STOP_READ_SECONDS = 0.25


class StopFlags:
    """The sweeps' stop flags as this process last read them, shared by its threads."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._read: dict[int, tuple[float, bool]] = {}  # job id -> (when, stopped)

    def checkpoint(self, rt: Runtime, job_id: int) -> Callable[[], None]:
        """Raises ``ScanStopped`` once the sweep was stopped."""
        check = stop_checkpoint(rt, job_id)

        def checkpoint() -> None:
            now = time.monotonic()
            with self._guard:
                when, stopped = self._read.get(job_id, (-STOP_READ_SECONDS, False))
            if not stopped and now - when < STOP_READ_SECONDS:
                return
            try:
                check()
            except ScanStopped:
                stopped = True
                raise
            finally:
                with self._guard:
                    self._read[job_id] = (now, stopped)
                    if len(self._read) > 100:  # ended sweeps: forget the oldest reads
                        oldest = sorted(self._read, key=lambda j: self._read[j][0])[:50]
                        for old in oldest:
                            del self._read[old]

        return checkpoint


STOP_FLAGS = StopFlags()


@dataclass
class Outcome:
    """How one item of the batch ended, waiting to be written."""

    item: ImageScan
    status: ItemStatus
    found: Found | None = None
    error: str | None = None
    record: bool = True  # an error is also the tag's latest result


def scan_batch(rt: Runtime, pairs: Sequence[tuple[int, int]]) -> None:
    """Scan the items of a batch, given as (item id, attempt); stale ones are left out."""
    with transaction(rt.sessions) as session:
        items = image_scans.claim_items(session, pairs)
    if len(items) < len(pairs):
        stale = len(pairs) - len(items)
        log.info("%d of %d images of the batch are stale; skipped", stale, len(pairs))
    if not items:
        return
    checkpoint = STOP_FLAGS.checkpoint(rt, items[0].job_id)
    writer = BatchWriter(rt, items)
    with Describer(rt, checkpoint) as describer:
        describer.expect(items)
        try:
            _scan_items(items, describer, writer, checkpoint)
        except SERVICES_AWAY:
            # The items stay running: the orchestrator's next holder, or its check for
            # stuck images, hands them out again once the service is back.
            raise
        except Exception as exc:
            _salvage(writer, items, exc)
            raise


def _scan_items(
    items: Sequence[ImageScan],
    describer: Describer,
    writer: BatchWriter,
    checkpoint: Callable[[], None],
) -> None:
    stopped = False
    for n, item in enumerate(items):
        if regular.SHUTTING_DOWN.is_set():
            # A rolling restart waits for running tasks: the rest of the batch goes back
            # to the sweep rather than hold this worker up.
            writer.flush(holding=[])
            writer.give_back(items[n:])
            return
        name = f"{item.registry_host}/{item.repository}:{item.tag or item.digest}"
        with log_context(job=item.job_id, image=name), image_scan("regular") as outcome:
            if stopped:
                outcome.skipped()
                writer.add(Outcome(item, ItemStatus.SKIPPED))
                continue
            try:
                checkpoint()
                found = describer.scan(item)
            except ScanStopped:
                stopped = True
                outcome.skipped()
                writer.add(Outcome(item, ItemStatus.SKIPPED))
            except TagMismatch as exc:
                # A refusal, not a scan: the tag's results stay as they were.
                outcome.failed(exc)
                log.warning("image_scan=%s refused: %s", item.id, exc)
                writer.add(Outcome(item, ItemStatus.FAILED, error=str(exc), record=False))
            except ScanError as exc:
                outcome.failed(exc)
                log.warning("image_scan=%s failed: %s", item.id, exc)
                writer.add(Outcome(item, ItemStatus.FAILED, error=str(exc)))
            else:
                writer.add(Outcome(item, ItemStatus.DONE, found=found))
                log.debug("image_scan=%s scanned: %d platform images", item.id, len(found))
        if writer.due() and not writer.flush(holding=items[n + 1 :]):
            return  # the sweep was taken over: what is left is the new holder's
    writer.flush(holding=[])


def _salvage(writer: BatchWriter, items: Sequence[ImageScan], exc: Exception) -> None:
    """An unexpected error: keep what the batch scanned, end the image it was at failed,
    saying why, and hand the others back to the sweep, rather than leave them all running
    until they count as stuck."""
    reached = writer.reached
    rest = [item for item in items if item.id not in reached]
    try:
        if rest:
            error = f"internal error: {type(exc).__name__}: {exc}"
            writer.add(Outcome(rest[0], ItemStatus.FAILED, error=error))
        if writer.flush(holding=[]) and len(rest) > 1:
            writer.give_back(rest[1:])
    except Exception:
        log.exception("job=%s a failed batch could not be wound up", writer.job_id)


class Describer:
    """Resolves the batch's images, describing and inventorying each image new to its
    repository once (under its lock) and storing it at once; remembers what it met."""

    def __init__(self, rt: Runtime, checkpoint: Callable[[], None]) -> None:
        self.rt = rt
        self.checkpoint = checkpoint
        self.locks = LayerCache(rt, checkpoint)  # its leases: the images' locks
        self.met: dict[tuple[str, str, str], PlatformImage] = {}

    def expect(self, items: Sequence[ImageScan]) -> None:
        """Read at once the images the items' tags pointed at when last seen: in an
        unchanged sweep, every image the batch will meet."""
        tags: dict[tuple[str, str], list[str]] = {}
        for item in items:
            if item.tag:
                tags.setdefault((item.registry_host, item.repository), []).append(item.tag)
        with self.rt.sessions() as session:
            for (host, repo), names in tags.items():
                for some in chunks(names):
                    for image in images_store.described_by_tags(
                        session, host, repo, some, ANALYSER_VERSION
                    ):
                        self.met[(host, repo, image.digest)] = stored_platform_image(image)

    def __enter__(self) -> Describer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.locks.release_all()

    def scan(self, item: ImageScan) -> Found:
        """Each platform image of the item; every one of them is stored by now, so none
        comes with an inventory."""
        reference = item.digest or item.tag or "latest"
        platforms = {item.os} if item.os else None
        known = BatchKnown(self, item.registry_host, item.repository)
        with self.rt.registry_client(item.registry_url, item.credential_id) as client:
            if item.tag and item.digest:
                check_tag_points_at(client, item)
            try:
                found = resolve_image(
                    client,
                    item.repository,
                    reference,
                    checkpoint=self.checkpoint,
                    platforms=platforms,
                    known=known,
                )
                if not found:
                    raise ScanError(_no_image(item, reference))
                for image in found:
                    if image.digest in known.hits:
                        continue  # stored: its inventory holds
                    inventory = take_inventory(
                        self.rt, client, item.repository, image, self.checkpoint
                    )
                    self._store(item, image, inventory)
                    lock = known.held.pop(image.digest, None)
                    if lock is not None:
                        self.locks.give_back(lock)
            finally:
                for lock in known.held.values():
                    self.locks.give_back(lock)
        return [(image, None) for image in found]

    def _store(self, item: ImageScan, image: PlatformImage, inventory: Inventory) -> None:
        """Store a new image with its inventory and findings, then let others see it."""
        for tries in range(WRITE_TRIES):
            try:
                with transaction(self.rt.sessions) as session:
                    stored = results.store_image(
                        session,
                        item.registry_host,
                        item.repository,
                        image,
                        inventory,
                        ANALYSER_VERSION,
                    )
                    stale = rematch.match_image(session, stored)
                break
            except IntegrityError:
                # Stored meanwhile by a scan that holds no lock (an on-demand one): the
                # transaction was rolled back whole, so writing again updates it.
                time.sleep(WRITE_BACKOFF * 2**tries)
        else:
            raise ScanError(f"could not store image {image.digest}")
        if stale:
            rematch.refresh(self.rt.sessions, stale)
        self.met[(item.registry_host, item.repository, image.digest)] = image


class BatchKnown(KnownImages):
    """The ``known`` hook of one item: what the batch met, else what is stored; on a miss
    it takes the image's lock (``held``) and looks again, so that one scan describes it."""

    def __init__(self, describer: Describer, registry_host: str, repository: str) -> None:
        super().__init__(describer.rt, registry_host, repository)
        self.describer = describer
        self.held: dict[str, str] = {}  # digest -> the lock held for it

    def __call__(self, digest: str) -> PlatformImage | None:
        met = self.describer.met
        key = (self.registry_host, self.repository, digest)
        found = met.get(key) or self.stored(digest)
        if found is None:
            lock = keys.image_lock(self.registry_host, self.repository, digest)
            if self.describer.locks.take(lock, lock, wait=IMAGE_WAIT_SECONDS):
                found = self.stored(digest)  # the holder we waited for stored it
                if found is None:
                    self.held[digest] = lock
                    return None
                self.describer.locks.give_back(lock)
            else:
                return None  # waited long enough: describe it here too
        met[key] = found
        self.hits.add(digest)
        return found


def _no_image(item: ImageScan, reference: str) -> str:
    name = f"{item.registry_host}/{item.repository}:{reference}"
    if item.os:
        return (
            f"{name} has no {item.os} image, and its registry specification scans "
            f"{item.os} images only (its os setting)"
        )
    return f"{name} has no platform image"


class BatchWriter:
    """Keeps the outcomes of a batch's items and writes them, many per transaction."""

    def __init__(self, rt: Runtime, items: Sequence[ImageScan]) -> None:
        self.rt = rt
        self.job_id = items[0].job_id
        self.token = items[0].fence
        self.outcomes: list[Outcome] = []
        self.since = time.monotonic()
        self.reached: set[int] = set()  # the ids of the items with an outcome

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.reached.add(outcome.item.id)

    def due(self) -> bool:
        s = self.rt.settings
        return bool(self.outcomes) and (
            len(self.outcomes) >= s.sweep_batch
            or time.monotonic() - self.since >= s.sweep_write_seconds
        )

    def flush(self, holding: Sequence[ImageScan]) -> bool:
        """Write what was kept; ``holding``, the items still to scan, are kept alive.
        False once the sweep was taken over (nothing more of the batch may be written)."""
        outcomes, self.outcomes = self.outcomes, []
        self.since = time.monotonic()
        if not outcomes:
            return True
        try:
            self._write(outcomes, [item.id for item in holding])
        except Fenced as exc:
            log.warning("job=%s results of %d images dropped: %s", self.job_id, len(outcomes), exc)
            return False
        return True

    def give_back(self, items: Sequence[ImageScan]) -> None:
        """Hand items this batch will not scan back to the sweep, unless it was taken
        over (the new holder hands them out again anyway)."""
        try:
            with transaction(self.rt.sessions) as session:
                fence(session, self.job_id, self.token)
                image_scans.give_back(session, [item.id for item in items])
        except Fenced:
            pass
        log.info(
            "job=%s %d images of a batch handed back: this worker is stopping",
            self.job_id,
            len(items),
        )

    def _write(self, outcomes: list[Outcome], holding: list[int]) -> None:
        _bring_current(self.rt, outcomes)
        away: OperationalError | None = None
        for tries in range(WRITE_TRIES):
            try:
                stale = self._transaction(outcomes, holding)
                if stale:  # the data changed since bring_current: the images follow it now
                    rematch.refresh(self.rt.sessions, stale)
                return
            except IntegrityError as exc:
                # A concurrent writer won a race (an on-demand scan of one of the tags):
                # the transaction was rolled back whole, so writing again is safe.
                log.info("job=%s batch writing again after: %s", self.job_id, type(exc).__name__)
            except OperationalError as exc:
                # A deadlock the database broke, or the database going away: wait a little.
                log.info("job=%s batch writing again after: %s", self.job_id, type(exc).__name__)
                away = exc
                time.sleep(WRITE_BACKOFF * 2**tries)
        if away is not None:
            # Still failing: the database is away. The items stay running; the sweep's
            # orchestrator hands them out again once they count as stuck, or a new holder
            # does at once.
            raise away
        if len(outcomes) > 1:
            # One of them keeps colliding: write them one by one, so the others are kept.
            for outcome in outcomes:
                self._write([outcome], holding)
            return
        [outcome] = outcomes
        if outcome.status is ItemStatus.FAILED:
            raise RuntimeError(f"image_scan={outcome.item.id}: could not store its result")
        # The image must not stay "running" for ever: end it failed, saying why.
        failed = Outcome(outcome.item, ItemStatus.FAILED, error="could not store the scan result")
        self._write([failed], holding)

    def _transaction(self, outcomes: list[Outcome], holding: list[int]) -> list[int]:
        with transaction(self.rt.sessions) as session:
            # Writers of the same tag take turns, always in the same order here.
            for outcome in sorted(outcomes, key=lambda o: _tag_key(o.item)):
                results.serialize_tag_writers(session, outcome.item)
            ends = [(o.item, o.item.attempts, o.status, o.error) for o in outcomes]
            ended = finish_items(session, self.job_id, self.token, ends)
            current = [o for o in outcomes if o.item.id in ended]
            if len(current) < len(outcomes):
                log.info(
                    "job=%s %d images of the batch were handed out again; their results dropped",
                    self.job_id,
                    len(outcomes) - len(current),
                )
            scanned = [
                (o.item, o.found, _tag_digest(o.found))
                for o in current
                if o.status is ItemStatus.DONE and o.found
            ]
            stale: list[int] = []
            if scanned:
                ids = results.record_many(session, scanned, ANALYSER_VERSION)
                images = [session.get_one(Image, image_id) for image_id in ids]
                # Findings in the same transaction: a result is never seen without them.
                stale = rematch.link_images(session, images)
            for o in current:
                if o.status is ItemStatus.FAILED and o.error is not None and o.record:
                    results.record_failure(session, o.item, o.error)
            image_scans.keep_alive(session, holding)
        return stale


def _tag_key(item: ImageScan) -> tuple[str, str, str, str]:
    return (item.registry_host, item.repository, item.tag, item.digest)


def _tag_digest(found: Found) -> str:
    first = found[0][0]
    return first.index_digest or first.digest


def _bring_current(rt: Runtime, outcomes: list[Outcome]) -> None:
    """As for one image (``worker.images``): results are never stored with findings older
    than the data they were scanned under. One look at the data's generation for the
    whole batch; only when it is ahead are the batch's images looked at."""
    with rt.sessions() as session:
        behind = vuln_records.findings_generation(session) < vuln_records.current_generation(
            session
        )
    if not behind:
        return
    for o in outcomes:
        if o.found:
            bring_current(rt, o.item, o.found)
