"""Node.js packages: ``package.json`` of each directory installed under ``node_modules``.

Only the package's own manifest counts (``node_modules/NAME/package.json`` or
``node_modules/@scope/NAME/package.json``): manifests deeper inside a package are its
test fixtures or examples, not installed packages.
"""

from __future__ import annotations

import json
from typing import BinaryIO

from scanner.errors import InvalidContent
from scanner.inventory.catalogers._common import MIB, read_bounded
from scanner.inventory.packages import NODEJS, Package

MAX_SIZE = 8 * MIB


def is_installed_manifest(path: str) -> bool:
    """Whether ``path`` is the package.json of a package directory under node_modules."""
    parts = path.split("/")
    if len(parts) < 3 or parts[-1] != "package.json":
        return False
    if parts[-3] == "node_modules":
        return not parts[-2].startswith("@")
    return len(parts) >= 4 and parts[-4] == "node_modules" and parts[-3].startswith("@")


class NpmCataloger:
    """Installed package manifests."""

    name = "npm"

    def wants(self, path: str, head: bytes) -> bool:
        """package.json directly inside a (possibly scoped) node_modules package directory."""
        return is_installed_manifest(path)

    def parse(self, path: str, file: BinaryIO) -> list[Package]:
        """The package, or nothing when the manifest lacks a name or a version."""
        data = read_bounded(path, file, MAX_SIZE)
        try:
            manifest = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise InvalidContent(f"{path}: not JSON: {error}") from error
        if not isinstance(manifest, dict):
            raise InvalidContent(f"{path}: not a JSON object")
        name, version = manifest.get("name"), manifest.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            return []
        if not name.strip() or not version.strip():
            return []
        return [Package(type=NODEJS, name=name.strip(), version=version.strip(), path=path)]
