"""The images of a sweep's batch, resolved: each image new to its repository is
described and inventoried once per sweep, whatever number of tags point at it. The
batch that meets it first holds its lock (``core.keys.image_lock``) and stores it at
once, ahead of any tag's result; other tags, in this batch or another, find it stored
and fetch nothing of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError

from core import keys
from models import ImageScan, results
from models import images as images_store
from models.db import transaction
from models.image_scans import chunks
from scanner.errors import ScanError
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory
from scanner.registry.images import PlatformImage, resolve_image
from worker import rematch
from worker.images import (
    WRITE_BACKOFF,
    WRITE_TRIES,
    Found,
    check_tag_points_at,
)
from worker.inventory import KnownImages, LayerCache, stored_platform_image, take_inventory
from worker.runtime import Runtime

# How long a batch waits for another to finish describing an image before it describes
# the image itself: a holder is normally quick, and two batches each waiting on a lock
# the other holds (two indexes listing shared images in different orders) must not wait
# for ever.
IMAGE_WAIT_SECONDS = 60.0


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
