"""What reading layers records, and how much a layer may make us read.

``LayerAnalysis`` is what one layer holds, independent of the layers below it; it is
cached by digest, so a layer shared by many images is read once. ``Inventory`` is
what the final image holds once the layers are merged. ``Limits`` bound the reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scanner.inventory.osinfo import OSInfo
from scanner.inventory.packages import Package


@dataclass
class LayerAnalysis:
    """What one layer holds, independent of the layers below it.

    ``packages`` maps each file a cataloger read to the packages found in it; an empty
    list records that the layer replaced that file with one holding none (or with a
    link), which hides the lower layers' packages there. ``os_files`` holds the text
    of OS description files; "" likewise marks one replaced by a non-regular file.
    """

    digest: str
    packages: dict[str, list[Package]] = field(default_factory=dict)
    os_files: dict[str, str] = field(default_factory=dict)
    whiteouts: list[str] = field(default_factory=list)  # paths deleted from lower layers
    opaque_dirs: list[str] = field(default_factory=list)  # dirs whose lower contents go
    expanded_bytes: int = 0  # of the uncompressed tar stream

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_json`` gives back an equal analysis."""
        return {
            "digest": self.digest,
            "packages": {
                path: [package.to_json() for package in found]
                for path, found in self.packages.items()
            },
            "os_files": dict(self.os_files),
            "whiteouts": list(self.whiteouts),
            "opaque_dirs": list(self.opaque_dirs),
            "expanded_bytes": self.expanded_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerAnalysis:
        """The analysis ``to_json`` described."""
        return cls(
            digest=data["digest"],
            packages={
                path: [Package.from_json(package) for package in found]
                for path, found in data["packages"].items()
            },
            os_files=dict(data["os_files"]),
            whiteouts=list(data["whiteouts"]),
            opaque_dirs=list(data["opaque_dirs"]),
            expanded_bytes=data["expanded_bytes"],
        )


@dataclass(frozen=True)
class Limits:
    """How much a layer may make us read."""

    max_expanded_bytes: int = 8 << 30  # uncompressed tar stream of one layer
    max_file_bytes: int = 256 << 20  # one file handed to a cataloger
    max_members: int = 2_000_000  # tar entries of one layer


DEFAULT_LIMITS = Limits()


@dataclass
class Inventory:
    """What the final image holds: its packages (sorted) and its OS."""

    packages: list[Package]
    os: OSInfo
