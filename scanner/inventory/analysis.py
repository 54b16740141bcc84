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
from collections.abc import Callable, Sequence
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.overlay import merge
from scanner.inventory.packages import Cataloger
from scanner.inventory.results import DEFAULT_LIMITS, Inventory, LayerAnalysis, Limits
from scanner.inventory.streams import CHUNK, Readable, layer_compression, tar_stream
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
) -> LayerAnalysis:
    """Read a layer blob from ``stream`` (compressed as ``media_type`` says, or as its
    first bytes show) and record its packages, OS files and whiteouts.

    Raises ``InvalidContent`` naming the layer (and the member) for corrupt or truncated
    streams, unsafe members, and anything over ``limits``.
    """
    reader = LayerReader(digest, catalogers, limits)
    with tar_stream(stream, digest, media_type, limits) as expanded:
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
) -> Inventory:
    """Analyse each layer (from ``cache_get`` when it has it, else downloaded, verified
    and stored with ``cache_put``) and merge them.

    ``checkpoint`` runs before each download and may raise ``ScanStopped``. Foreign
    layers are skipped (no registry serves them); any other type we cannot read
    raises ``InvalidContent`` before anything is downloaded.
    """
    readable = []
    for layer in layers:
        if layer.media_type == FOREIGN_LAYER:
            log.info("skipping foreign layer %s of %s", layer.digest, repository)
            continue
        layer_compression(layer.media_type, layer.digest)
        readable.append(layer)
    step = checkpoint or _nothing
    analyses: dict[str, LayerAnalysis] = {}
    for layer in readable:
        if layer.digest in analyses:
            continue  # the same layer twice in one image
        cached = cache_get(layer.digest)
        if cached is None:
            step()
            cached = _download(client, repository, layer, catalogers, limits)
            cache_put(layer.digest, layer.media_type, layer.size, cached)
        analyses[layer.digest] = cached
    return merge([analyses[layer.digest] for layer in readable], [x.digest for x in readable])


def _download(
    client: RegistryClient,
    repository: str,
    layer: Layer,
    catalogers: Sequence[Cataloger],
    limits: Limits,
) -> LayerAnalysis:
    """Analyse a layer from the registry; only a blob verified to its end counts. A
    download that breaks off midway starts over (``RegistryClient.read_blob``)."""

    def read(blob: BinaryIO) -> LayerAnalysis:
        try:
            analysis = analyse_layer(
                blob,
                digest=layer.digest,
                media_type=layer.media_type,
                catalogers=catalogers,
                limits=limits,
            )
        except InvalidContent:
            # Bytes that are not the layer's explain a broken stream better than it does.
            _drain(blob)
            raise
        _drain(blob)
        return analysis

    return client.read_blob(repository, layer.digest, read, size=layer.size)


def _drain(blob: BinaryIO) -> None:
    while blob.read(CHUNK):
        pass


def _nothing() -> None:
    return None
