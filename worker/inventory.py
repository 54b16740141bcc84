"""The inventory of an image: from the layer cache where it can, from the registry
where it must, one download per layer however many workers want it.

The layers of one image are read in parallel (``REGSCAN_LAYER_PARALLELISM``), so one
scan may hold several layer locks at once, taken and released by different threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from sqlalchemy.exc import IntegrityError

from core import keys
from models import Image
from models import images as images_store
from models import layers as layer_store
from models.db import transaction
from scanner.inventory.analysis import analyse_image
from scanner.inventory.catalogers import ALL as CATALOGERS
from scanner.inventory.packages import ANALYSER_VERSION
from scanner.inventory.results import Inventory, LayerAnalysis, Limits
from scanner.registry.client import RegistryClient
from scanner.registry.images import Layer, PlatformImage
from worker.runtime import Runtime
from worker.telemetry import layer_lookup

log = logging.getLogger(__name__)
LOCK_POLL_SECONDS = 0.2


class LayerCache:
    """Cache lookups that, on a miss, hold the layer's Redis lock until the analysis
    is stored, so concurrent scans of images sharing a layer download it once.

    The lock is a lease: its TTL is short (``layer_lock_seconds``) and a thread renews
    every lock this cache holds, so other workers wait for a live holder however long
    the layer takes, and take the layer over within the TTL when the holder died."""

    def __init__(self, rt: Runtime, checkpoint: Callable[[], None]) -> None:
        self.rt = rt
        self.checkpoint = checkpoint
        self.ttl = rt.settings.layer_lock_seconds
        self.held: dict[str, Lock] = {}
        self._guard = threading.Lock()
        self._closed = threading.Event()
        self._renewer: threading.Thread | None = None

    def get(self, digest: str) -> LayerAnalysis | None:
        found = self._get(digest)
        layer_lookup(hit=found is not None)
        return found

    def _get(self, digest: str) -> LayerAnalysis | None:
        found = self._lookup(digest)
        if found is not None:
            return found
        self.take(digest, keys.layer_lock(digest))
        found = self._lookup(digest)  # the holder we waited for may have stored it
        if found is not None:
            self.give_back(digest)
            return found
        return None

    def take(self, name: str, key: str, wait: float | None = None) -> bool:
        """Hold the lock ``key`` under ``name`` until :meth:`give_back`, renewed with the
        others; False when ``wait`` seconds passed before it was free."""
        # Not thread-local: the renewing thread extends it with this thread's token, and
        # the scan's thread releases it when a layer's thread gave up.
        lock = self.rt.redis.lock(key, timeout=self.ttl, thread_local=False)
        deadline = None if wait is None else time.monotonic() + wait
        while not lock.acquire(blocking=False):
            self.checkpoint()  # a stop must not wait for someone else's download
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_SECONDS)
        self._hold(name, lock)
        return True

    def give_back(self, name: str) -> None:
        with self._guard:
            lock = self.held.pop(name, None)
        if lock is not None:
            _release(lock)

    def put(self, digest: str, media_type: str, size: int, analysis: LayerAnalysis) -> None:
        try:
            with transaction(self.rt.sessions) as session:
                layer_store.store_analysis(
                    session, digest, ANALYSER_VERSION, media_type, size, analysis.to_json()
                )
        except IntegrityError:
            pass  # stored meanwhile by a worker that did not see our lock (it expired)
        finally:
            self.give_back(digest)

    def release_all(self) -> None:
        self._closed.set()
        with self._guard:
            locks, self.held = list(self.held.values()), {}
        for lock in locks:
            _release(lock)

    def _hold(self, digest: str, lock: Lock) -> None:
        with self._guard:
            self.held[digest] = lock
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew, name="layer-locks", daemon=True
                )
                self._renewer.start()

    def _renew(self) -> None:
        """Every third of the TTL, give each held lock its full TTL again."""
        while not self._closed.wait(self.ttl / 3):
            with self._guard:
                locks = list(self.held.items())
            for digest, lock in locks:
                try:
                    lock.reacquire()
                except LockError:
                    # Expired before we renewed it (a long pause): another worker may
                    # analyse the layer too; storing the analysis twice is harmless.
                    log.warning("layer lock of %s lapsed while held", digest)
                except RedisError as exc:
                    log.warning("layer lock of %s not renewed: %s", digest, exc)

    def _lookup(self, digest: str) -> LayerAnalysis | None:
        with self.rt.sessions() as session:
            result = layer_store.cached_analysis(session, digest, ANALYSER_VERSION)
        return LayerAnalysis.from_json(result) if result is not None else None


def _release(lock: Lock) -> None:
    try:
        lock.release()
    except Exception:  # expired meanwhile: nothing of ours to release
        log.debug("layer lock %s was no longer ours", lock.name)


@contextmanager
def layer_cache(rt: Runtime, checkpoint: Callable[[], None]) -> Iterator[LayerCache]:
    cache = LayerCache(rt, checkpoint)
    try:
        yield cache
    finally:
        cache.release_all()


def take_inventory(
    rt: Runtime,
    client: RegistryClient,
    repository: str,
    image: PlatformImage,
    checkpoint: Callable[[], None],
) -> Inventory:
    """Analyse an image's layers (each from the cache if it was seen before) and merge."""
    limits = Limits(max_expanded_bytes=rt.settings.max_layer_expanded_bytes)
    with layer_cache(rt, checkpoint) as cache:
        return analyse_image(
            client,
            repository,
            image.layers,
            catalogers=CATALOGERS,
            cache_get=cache.get,
            cache_put=cache.put,
            checkpoint=checkpoint,
            limits=limits,
            parallel=rt.settings.layer_parallelism,
        )


class KnownImages:
    """A ``known`` hook for ``resolve_image``: images this analyser version has already
    inventoried are described from the database, so no blob of theirs is fetched again.
    ``hits`` holds the digests it answered for."""

    def __init__(self, rt: Runtime, registry_host: str, repository: str) -> None:
        self.rt = rt
        self.registry_host = registry_host
        self.repository = repository
        self.hits: set[str] = set()

    def __call__(self, digest: str) -> PlatformImage | None:
        found = self.stored(digest)
        if found is not None:
            self.hits.add(digest)
        return found

    def stored(self, digest: str) -> PlatformImage | None:
        """The image as stored by this analyser version, or None."""
        with self.rt.sessions() as session:
            image = images_store.find_described(
                session, self.registry_host, self.repository, digest
            )
            if image is None or image.analyser_version != ANALYSER_VERSION:
                return None
            return stored_platform_image(image)


def stored_platform_image(image: Image) -> PlatformImage:
    parts = image.platform.split("/")
    return PlatformImage(
        digest=image.digest,
        media_type=image.media_type,
        platform=image.platform,
        os=image.os,
        architecture=image.architecture,
        variant=parts[2] if len(parts) > 2 else "",
        created=image.created,
        size=image.size,
        layers=[Layer(x["digest"], x["size"], x["mediaType"]) for x in image.layers],
        config_digest=image.config_digest,
        index_digest=image.index_digest,
    )
