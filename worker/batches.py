"""A batch of a sweep's images: one task scans them one after the other and writes what
it found for many of them in one transaction.

An image whose digest did not change costs one manifest request and its share of a
batched write. An image new to its repository (a manifest digest not stored yet) is
described and inventoried once per sweep, however many tags point at it
(``worker/describe.py``).

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

from core.logs import log_context
from models import Image, ImageScan, ItemStatus, image_scans, result_batches, results, vuln_records
from models.db import transaction
from models.fencing import Fenced, fence, finish_items
from scanner.errors import ScanError, ScanStopped
from scanner.inventory.packages import ANALYSER_VERSION
from worker import regular, rematch
from worker.describe import Describer
from worker.images import (
    SERVICES_AWAY,
    WRITE_BACKOFF,
    WRITE_TRIES,
    Found,
    TagMismatch,
    bring_current,
    stop_checkpoint,
)
from worker.runtime import Runtime
from worker.telemetry import image_scan

log = logging.getLogger(__name__)

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
                log.info("image_scan=%s scanned: %d platform images", item.id, len(found))
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
                ids = result_batches.record_many(session, scanned, ANALYSER_VERSION)
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
