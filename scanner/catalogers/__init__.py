"""The catalogers the layer reader runs over every file of an image.

Each reads one kind of package file (see ``scanner.packages.Cataloger``); ``ALL`` is
the set the scanner uses, in the order their results are reported.
"""

from __future__ import annotations

from scanner.catalogers.apk import ApkCataloger
from scanner.catalogers.dpkg import DpkgCataloger
from scanner.catalogers.golang import GoCataloger
from scanner.catalogers.java import JavaCataloger
from scanner.catalogers.npm import NpmCataloger
from scanner.catalogers.python import PythonCataloger
from scanner.catalogers.rpm import RpmCataloger
from scanner.packages import Cataloger

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
