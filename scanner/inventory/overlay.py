"""The overlay merge: an image's layers, bottom first, as the final image has them.

Each layer's analysis is recorded on its own; the merge applies them in order, as
an overlay filesystem would, and tags each package with the digest of its file's layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from scanner.inventory.osinfo import detect_os
from scanner.inventory.packages import Package
from scanner.inventory.results import Inventory, LayerAnalysis


def merge(layers: Sequence[LayerAnalysis], layer_digests: Sequence[str]) -> Inventory:
    """The inventory of the image the layers make, bottom layer first.

    A file of an upper layer replaces the same path below; a whiteout removes a path and
    everything under it from the layers below; an opaque directory hides the lower
    layers' entries under it. Packages are tagged with the digest of their file's layer.
    """
    if len(layers) != len(layer_digests):
        raise ValueError(f"{len(layers)} layer analyses for {len(layer_digests)} digests")
    files: dict[str, list[Package]] = {}
    os_files: dict[str, str] = {}
    for analysis, digest in zip(layers, layer_digests, strict=True):
        _hide_lower(files, analysis)
        _hide_lower(os_files, analysis)
        for path, found in analysis.packages.items():
            files[path] = [replace(p, layer=digest, path=p.path or path) for p in found]
        os_files.update(analysis.os_files)
    packages = sorted((p for found in files.values() for p in found), key=_package_order)
    return Inventory(packages=packages, os=detect_os(os_files))


def _hide_lower(entries: dict[str, Any], analysis: LayerAnalysis) -> None:
    """Drop what the layer's whiteouts and opaque directories hide."""
    gone = set(analysis.whiteouts)
    opaque = set(analysis.opaque_dirs)
    if gone or opaque:
        for path in [path for path in entries if _hidden(path, gone, opaque)]:
            del entries[path]


def _hidden(path: str, gone: set[str], opaque: set[str]) -> bool:
    if path in gone:
        return True
    parts = path.split("/")
    for depth in range(len(parts)):
        ancestor = "/".join(parts[:depth])  # "" is the root, which may be opaque
        if ancestor in opaque or (depth and ancestor in gone):
            return True
    return False


def _package_order(package: Package) -> tuple[str, str, str, str]:
    return package.type, package.name, package.version, package.path
