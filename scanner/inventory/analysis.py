"""Read an image's layers and merge what they hold into the image's inventory.

The entry points of the inventory. A layer is read once, straight from the registry:
decompressed on the fly (``streams``), walked member by member (``tar``), never
extracted and never held whole in memory. What a layer holds is recorded per layer
(``LayerAnalysis``, which the caller caches by digest) and the layers are merged with
overlay semantics afterwards (``overlay.merge``), so a layer shared by many images is
read once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.overlay import merge
from scanner.inventory.packages import Cataloger
from scanner.inventory.results import DEFAULT_LIMITS, Inventory, LayerAnalysis, Limits
from scanner.inventory.streams import (
    CHUNK,
    INFLATER,
    Readable,
    layer_compression,
    tar_stream,
)
from scanner.inventory.tar import LayerReader
from scanner.registry.client import RegistryClient
from scanner.registry.images import Layer

log = logging.getLogger(__name__)

# Windows base layers: served from elsewhere by design, never by the registry.
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def analyse_layer(
    stream: BinaryIO | Readable,
    *,
    digest: str,
    media_type: str,
    catalogers: Sequence[Cataloger],
    limits: Limits = DEFAULT_LIMITS,
    inflater: str = INFLATER,
    read_ahead: bool = True,
) -> LayerAnalysis:
    """Read a layer blob from ``stream`` (compressed as ``media_type`` says, or as its
    first bytes show) and record its packages, OS files and whiteouts.

    Raises ``InvalidContent`` naming the layer (and the member) for corrupt or truncated
    streams, unsafe members, and anything over ``limits``. ``inflater`` and
    ``read_ahead`` choose how gzip is inflated (see ``streams.tar_stream``), for the
    benchmarks to compare; the defaults are the fastest.
    """
    reader = LayerReader(digest, catalogers, limits)
    with tar_stream(
        stream, digest, media_type, limits, inflater=inflater, read_ahead=read_ahead
    ) as expanded:
        reader.read(expanded)
        expanded.drain()  # what follows the archive counts too, and must decompress
        reader.analysis.expanded_bytes = expanded.count
    return reader.analysis


def analyse_image(
    client: RegistryClient,
    repository: str,
    layers: Sequence[Layer],
    *,
    catalogers: Sequence[Cataloger],
    cache_get: Callable[[str], LayerAnalysis | None],
    cache_put: Callable[[str, str, int, LayerAnalysis], None],
    checkpoint: Callable[[], None] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    parallel: int = 1,
) -> Inventory:
    """Analyse each layer (from ``cache_get`` when it has it, else downloaded, verified
    and stored with ``cache_put``) and merge them in the image's order.

    Up to ``parallel`` layers are looked up and read at once, each in a thread of its
    own; ``cache_get`` and ``cache_put`` of one layer run in the same thread.
    ``checkpoint`` runs before each download and may raise ``ScanStopped``. When one
    layer fails the others are abandoned at their next read, and the error of the
    lowest failed layer is raised. Foreign layers are skipped (no registry serves them);
    any other type we cannot read raises ``InvalidContent`` before anything is
    downloaded.
    """
    readable = []
    for layer in layers:
        if layer.media_type == FOREIGN_LAYER:
            log.info("skipping foreign layer %s of %s", layer.digest, repository)
            continue
        layer_compression(layer.media_type, layer.digest)
        readable.append(layer)
    unique: dict[str, Layer] = {}
    for layer in readable:
        unique.setdefault(layer.digest, layer)  # the same layer twice in one image
    reading = _Reading(client, repository, catalogers, limits, checkpoint or _nothing)
    analyses = reading.all(list(unique.values()), cache_get, cache_put, parallel)
    return merge([analyses[layer.digest] for layer in readable], [x.digest for x in readable])


class _Abandoned(Exception):
    """Another layer of the image failed: this one is not worth finishing."""


class _Reading:
    """The reading of one image's layers: what every layer needs, and the flag that
    tells them all to give up."""

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        catalogers: Sequence[Cataloger],
        limits: Limits,
        checkpoint: Callable[[], None],
    ) -> None:
        self.client = client
        self.repository = repository
        self.catalogers = catalogers
        self.limits = limits
        self.checkpoint = checkpoint
        self.abandoned = threading.Event()

    def all(
        self,
        layers: Sequence[Layer],
        cache_get: Callable[[str], LayerAnalysis | None],
        cache_put: Callable[[str, str, int, LayerAnalysis], None],
        parallel: int,
    ) -> dict[str, LayerAnalysis]:
        """Each layer's analysis by digest."""

        def one(layer: Layer) -> LayerAnalysis:
            return self.layer(layer, cache_get, cache_put)

        if parallel <= 1 or len(layers) <= 1:
            return {layer.digest: one(layer) for layer in layers}
        with ThreadPoolExecutor(min(parallel, len(layers)), thread_name_prefix="layer") as pool:
            futures = {layer.digest: pool.submit(one, layer) for layer in layers}
            for done in as_completed(futures.values()):
                if done.exception() is not None:
                    self.abandoned.set()  # the others stop at their next read
        # Every thread has returned by now, so none holds a layer the caller does not know.
        _raise_first_failure(list(futures.values()))
        return {digest: future.result() for digest, future in futures.items()}

    def layer(
        self,
        layer: Layer,
        cache_get: Callable[[str], LayerAnalysis | None],
        cache_put: Callable[[str, str, int, LayerAnalysis], None],
    ) -> LayerAnalysis:
        """One layer, from the cache or from the registry.

        ``cache_get`` may wait for another worker that is reading the same layer; that
        wait is not cut short when another layer of this image fails (the other worker
        is making progress), only by ``checkpoint``, which the cache runs while it waits.
        """
        cached = cache_get(layer.digest)
        if cached is not None:
            return cached
        if self.abandoned.is_set():
            raise _Abandoned(layer.digest)  # the caller releases what cache_get took
        self.checkpoint()
        analysis = self.download(layer)
        cache_put(layer.digest, layer.media_type, layer.size, analysis)
        return analysis

    def download(self, layer: Layer) -> LayerAnalysis:
        """Analyse a layer from the registry; only a blob verified to its end counts. A
        download that breaks off midway starts over (``RegistryClient.read_blob``)."""

        def read(blob: BinaryIO) -> LayerAnalysis:
            try:
                analysis = analyse_layer(
                    _Abandonable(blob, self.abandoned, layer.digest),
                    digest=layer.digest,
                    media_type=layer.media_type,
                    catalogers=self.catalogers,
                    limits=self.limits,
                )
            except InvalidContent:
                # Bytes that are not the layer's explain a broken stream better than it does.
                _drain(blob)
                raise
            _drain(blob)
            return analysis

        return self.client.read_blob(self.repository, layer.digest, read, size=layer.size)


class _Abandonable:
    """A blob that stops being read once the image's reading is abandoned."""

    def __init__(self, blob: BinaryIO, abandoned: threading.Event, digest: str) -> None:
        self._blob = blob
        self._abandoned = abandoned
        self._digest = digest

    def read(self, size: int = -1, /) -> bytes:
        if self._abandoned.is_set():
            raise _Abandoned(self._digest)
        return self._blob.read(size)


def _raise_first_failure(futures: list[Future[LayerAnalysis]]) -> None:
    """Raise the error of the lowest layer that failed of itself, if any failed."""
    failures = [exc for future in futures if (exc := future.exception()) is not None]
    # sorted() is stable: layer order is kept among the real failures.
    for exc in sorted(failures, key=lambda exc: isinstance(exc, _Abandoned)):
        raise exc


def _drain(blob: BinaryIO) -> None:
    while blob.read(CHUNK):
        pass


def _nothing() -> None:
    return None
