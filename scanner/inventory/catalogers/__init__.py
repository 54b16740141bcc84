"""The catalogers the layer reader runs over every file of an image.

Each reads one kind of package file (see ``scanner.inventory.packages.Cataloger``);
``ALL`` is the set the scanner uses, in the order their results are reported.
"""

from __future__ import annotations

from scanner.inventory.catalogers.apk import ApkCataloger
from scanner.inventory.catalogers.dpkg import DpkgCataloger
from scanner.inventory.catalogers.golang import GoCataloger
from scanner.inventory.catalogers.java import JavaCataloger
from scanner.inventory.catalogers.npm import NpmCataloger
from scanner.inventory.catalogers.python import PythonCataloger
from scanner.inventory.catalogers.rpm import RpmCataloger
from scanner.inventory.packages import Cataloger

ALL: tuple[Cataloger, ...] = (
    DpkgCataloger(),
    ApkCataloger(),
    RpmCataloger(),
    PythonCataloger(),
    NpmCataloger(),
    GoCataloger(),
    JavaCataloger(),
)

__all__ = [
    "ALL",
    "ApkCataloger",
    "DpkgCataloger",
    "GoCataloger",
    "JavaCataloger",
    "NpmCataloger",
    "PythonCataloger",
    "RpmCataloger",
]
