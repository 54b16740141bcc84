"""Catalogers against real package databases and binaries made by the real tools.

dpkg reads this machine's own status database; the rpm databases come from rpmbuild
and rpm (the Berkeley DB one loaded by db5.3_load and read back by rpm itself); the Go
binary is built by the Go toolchain from modules served by a local file proxy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from scanner.errors import InvalidContent
from scanner.inventory.catalogers import ALL
from scanner.inventory.catalogers.apk import ApkCataloger
from scanner.inventory.catalogers.dpkg import DpkgCataloger
from scanner.inventory.catalogers.golang import GoCataloger
from scanner.inventory.catalogers.java import JavaCataloger
from scanner.inventory.catalogers.npm import NpmCataloger
from scanner.inventory.catalogers.python import PythonCataloger
from scanner.inventory.catalogers.rpm import RpmCataloger
from scanner.inventory.catalogers.rpmheader import header_package
from scanner.inventory.packages import GO, JAR, NODEJS, OS_PACKAGE, PYTHON, Cataloger, Package

FIXTURES = Path(__file__).parent / "fixtures"


# -- helpers --------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of a system tool the test needs; scripts/test.sh installs them all."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/test.sh, which installs it")
    return found


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{args[0]} failed: {result.stderr}"
    return result.stdout


def parse_as(cataloger: Cataloger, image_path: str, real: Path | bytes) -> list[Package]:
    """What ``cataloger`` reports for a file at ``image_path``, after checking it wants it."""
    file = io.BytesIO(real) if isinstance(real, bytes) else real.open("rb")
    with file:
        assert cataloger.wants(image_path, file.read(512)), image_path
        file.seek(0)
        return cataloger.parse(image_path, file)


def catalog_tree(root: Path) -> list[Package]:
    """Every cataloger of ALL over every file under ``root``, as the layer reader would."""
    found: list[Package] = []
    for real in sorted(p for p in root.rglob("*") if p.is_file()):
        image_path = real.relative_to(root).as_posix()
        with real.open("rb") as file:
            head = file.read(512)
            for cataloger in ALL:
                if cataloger.wants(image_path, head):
                    file.seek(0)
                    found.extend(cataloger.parse(image_path, file))
    return found


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)


def ordered(packages: Iterable[Package]) -> list[Package]:
    return sorted(packages, key=dataclasses.astuple)


def triples(packages: Iterable[Package]) -> list[tuple[str, str, str]]:
    return [(p.type, p.name, p.version) for p in packages]


# -- the set ----------------------------------------------------------------------------------


def test_all_holds_one_cataloger_per_format() -> None:
    # Given the exported set / Then each format has one cataloger with a distinct name
    assert [c.name for c in ALL] == ["dpkg", "apk", "rpm", "python", "npm", "go", "java"]


# -- dpkg -------------------------------------------------------------------------------------


def test_dpkg_reads_this_machines_status_like_dpkg_query() -> None:
    # Given this machine's real dpkg database and what dpkg-query says is installed
    query = run(
        tool("dpkg-query"),
        "-W",
        "-f=${db:Status-Status}\\t${Package}\\t${Version}\\t${source:Package}\\t"
        "${source:Version}\\n",
    )
    expected = ordered(
        Package(OS_PACKAGE, name, version, source, source_version, "var/lib/dpkg/status")
        for state, name, version, source, source_version in (
            line.split("\t") for line in query.splitlines()
        )
        if state == "installed"
    )

    # When the status file is parsed
    packages = parse_as(DpkgCataloger(), "var/lib/dpkg/status", Path("/var/lib/dpkg/status"))

    # Then it reports exactly the installed packages, with their source packages
    assert ordered(packages) == expected
    libc6 = next(p for p in packages if p.name == "libc6")
    assert (libc6.source_name, libc6.source_version) == ("glibc", libc6.version)


def test_dpkg_skips_packages_that_are_not_installed() -> None:
    # Given a status file with an installed, a removed and a half-installed package
    status = (
        "Package: kept\nStatus: install ok installed\nVersion: 1.0-1\n"
        "Description: kept\n multi-line\n .\n description\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 2.0\n\n"
        "Package: broken\nStatus: install reinstreq half-installed\nVersion: 3.0\n\n"
        "Package: held\nStatus: hold ok installed\nVersion: 4.0\nSource: heldsrc (3.9)\n"
    )

    # When it is parsed
    packages = parse_as(DpkgCataloger(), "var/lib/dpkg/status", status.encode())

    # Then only the packages whose files are installed are reported
    assert [(p.name, p.version, p.source_name, p.source_version) for p in packages] == [
        ("kept", "1.0-1", "kept", "1.0-1"),
        ("held", "4.0", "heldsrc", "3.9"),
    ]


def test_dpkg_reads_distroless_status_d(tmp_path: Path) -> None:
    # Given a distroless image's status.d: one file per package, one with two stanzas,
    # and the md5sums files beside them
    write_tree(
        tmp_path,
        {
            "var/lib/dpkg/status.d/base": (
                "Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\n"
                "Maintainer: Santiago Vila <sanvila@debian.org>\n"
            ),
            "var/lib/dpkg/status.d/libssl3": (
                "Package: libssl3\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n"
                "Architecture: amd64\n\n"
                "Package: openssl\nSource: openssl (3.0.11-1~deb12u2)\n"
                "Version: 3.0.11-1~deb12u2+b1\n"
            ),
            "var/lib/dpkg/status.d/libssl3.md5sums": (
                "0123456789abcdef0123456789abcdef  usr/lib/x86_64-linux-gnu/libssl.so.3\n"
            ),
        },
    )

    # When the image tree is cataloged
    packages = catalog_tree(tmp_path)

    # Then each stanza is a package, the md5sums are not read, sources are mapped
    assert packages == [
        Package(
            OS_PACKAGE,
            "base-files",
            "12.4+deb12u5",
            "base-files",
            "12.4+deb12u5",
            "var/lib/dpkg/status.d/base",
        ),
        Package(
            OS_PACKAGE,
            "libssl3",
            "3.0.11-1~deb12u2",
            "openssl",
            "3.0.11-1~deb12u2",
            "var/lib/dpkg/status.d/libssl3",
        ),
        Package(
            OS_PACKAGE,
            "openssl",
            "3.0.11-1~deb12u2+b1",
            "openssl",
            "3.0.11-1~deb12u2",
            "var/lib/dpkg/status.d/libssl3",
        ),
    ]


def test_dpkg_garbage_line_is_invalid_content_naming_file_and_line() -> None:
    # Given a status file whose fifth line is neither a field nor a continuation
    status = b"Package: a\nStatus: install ok installed\nVersion: 1\n\nthis is not a field\n"

    # When it is parsed / Then the error names the file and the line
    with pytest.raises(InvalidContent, match=r"var/lib/dpkg/status: line 5: not a field"):
        parse_as(DpkgCataloger(), "var/lib/dpkg/status", status)


def test_dpkg_continuation_before_any_field_is_invalid() -> None:
    # Given a stanza that starts with a continuation line
    status = b"Package: a\nVersion: 1\n\n continued\n"

    # When it is parsed / Then it is refused with its line number
    with pytest.raises(InvalidContent, match=r"line 4: continuation"):
        parse_as(DpkgCataloger(), "var/lib/dpkg/status.d/a", status)


# -- apk --------------------------------------------------------------------------------------

APK_INSTALLED = """\
C:Q1SVe3ULuJ5Vm3LjFJwvPXbjM3ElY=
P:musl
V:1.2.4-r2
A:x86_64
S:383152
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1698678543
c:0e9ed9d3a1fb1e0b8ef4e1bbf8b4a8ff5a5a6ef4
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1lWBzdbCJJ2NUwlT9DHJbl3pXgb4=
R:libc.musl-x86_64.so.1

C:Q1Ig6eBHwVuW8y/5sWw0NnxaIuAkY=
P:libcrypto3
V:3.1.4-r1
A:x86_64
T:Crypto library from openssl
o:openssl
D:so:libc.musl-x86_64.so.1
F:usr/lib
R:libcrypto.so.3

C:Q1G1Y5Qd1sq3jU9d5NJkQw6qV0hQQ=
P:busybox-binsh
V:1.36.1-r15
A:x86_64
o:busybox
F:bin
R:sh
"""


def test_apk_reads_installed_database() -> None:
    # Given an Alpine installed database with three packages, two from other origins
    # When it is parsed
    packages = parse_as(ApkCataloger(), "lib/apk/db/installed", APK_INSTALLED.encode())

    # Then each entry is reported with its origin as source
    path = "lib/apk/db/installed"
    assert packages == [
        Package(OS_PACKAGE, "musl", "1.2.4-r2", "musl", "1.2.4-r2", path),
        Package(OS_PACKAGE, "libcrypto3", "3.1.4-r1", "openssl", "3.1.4-r1", path),
        Package(OS_PACKAGE, "busybox-binsh", "1.36.1-r15", "busybox", "1.36.1-r15", path),
    ]


def test_apk_garbage_is_invalid_content() -> None:
    # Given an installed database with a line that is not key:value
    broken = APK_INSTALLED.replace("R:sh\n", "garbage here\n")

    # When it is parsed / Then the error names the file and line
    with pytest.raises(InvalidContent, match=r"lib/apk/db/installed: line 37: not a key:value"):
        parse_as(ApkCataloger(), "lib/apk/db/installed", broken.encode())


# -- rpm --------------------------------------------------------------------------------------

# Long enough that its header spans several Berkeley DB overflow pages.
LONG_DESCRIPTION = "\n".join(f"Line {n} of a long description." for n in range(800))

SPECS = {
    "tinya": f"""\
Name: tinya
Version: 1.2.3
Release: 4.el9
Epoch: 2
Summary: Tiny package with an epoch
License: MIT
BuildArch: noarch
%description
{LONG_DESCRIPTION}
%files
""",
    "tinyb": """\
Name: tinyb
Version: 0.9
Release: 1
Summary: Tiny package with a subpackage
License: MIT
BuildArch: noarch
%description
Main package.
%package extra
Summary: Subpackage built from the same source
%description extra
Subpackage.
%files
%files extra
""",
    "tinyc": """\
Name: tinyc
Version: 10.0~rc1
Release: 0.1.fc40
Epoch: 0
Summary: Tiny package with an explicit zero epoch
License: MIT
BuildArch: noarch
%description
Zero epoch.
%files
""",
}

RPM_QUERY = "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{EPOCHNUM}\\t%{SOURCERPM}\\n"


@pytest.fixture(scope="session")
def rpm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image root whose var/lib/rpm/rpmdb.sqlite rpm itself wrote: four packages
    built by rpmbuild and an imported signing key."""
    rpmbuild, rpm = tool("rpmbuild"), tool("rpm")
    work = tmp_path_factory.mktemp("rpm")
    specs = []
    for name, text in SPECS.items():
        spec = work / f"{name}.spec"
        spec.write_text(text)
        specs.append(str(spec))
    top = work / "top"
    run(rpmbuild, "-bb", "--quiet", "--define", f"_topdir {top}", *specs)
    built = sorted(str(p) for p in top.glob("RPMS/noarch/*.rpm"))
    assert len(built) == 4
    root = work / "root"
    dbpath = root / "var/lib/rpm"
    dbpath.mkdir(parents=True)
    run(rpm, "--initdb", "--dbpath", str(dbpath))
    run(rpm, "-i", "--justdb", "--nodeps", "--ignorearch", "--dbpath", str(dbpath), *built)
    run(rpm, "--import", str(FIXTURES / "rpm/signing-key.asc"), "--dbpath", str(dbpath))
    return root


def rpm_listing(dbpath: Path, *options: str) -> list[tuple[str, str, str, str]]:
    """(name, [epoch:]version-release, epochnum, source rpm) as rpm lists the database."""
    output = run(tool("rpm"), "-qa", "--dbpath", str(dbpath), *options, "--qf", RPM_QUERY)
    return sorted(tuple(line.split("\t")) for line in output.splitlines())


def check_against_rpm(packages: list[Package], listing: list[tuple[str, ...]], path: str) -> None:
    # rpm lists the imported key; it is no software and must not be reported.
    assert [row[0] for row in listing].count("gpg-pubkey") == 1
    listing = [row for row in listing if row[0] != "gpg-pubkey"]
    assert sorted((p.name, p.version) for p in packages) == [(r[0], r[1]) for r in listing]
    by_name = {p.name: p for p in packages}
    for name, version, epochnum, source_rpm in listing:
        package = by_name[name]
        # EPOCHNUM counts a missing epoch as 0.
        epoch, colon, _ = version.partition(":")
        assert (epoch if colon else "0") == epochnum
        stem = source_rpm.removesuffix(".src.rpm")
        source_name, source_version, source_release = stem.rsplit("-", 2)
        prefix = f"{epoch}:" if colon else ""
        expected_source = (source_name, f"{prefix}{source_version}-{source_release}")
        assert (package.source_name, package.source_version) == expected_source
        assert (package.type, package.path) == (OS_PACKAGE, path)


def test_rpm_sqlite_database_matches_rpm_query(rpm_root: Path) -> None:
    # Given an rpmdb.sqlite written by rpm, and rpm's own listing of it
    dbpath = rpm_root / "var/lib/rpm"
    listing = rpm_listing(dbpath)

    # When the image tree is cataloged
    packages = catalog_tree(rpm_root)

    # Then the packages are rpm's, gpg-pubkey aside, with source packages
    check_against_rpm(packages, listing, "var/lib/rpm/rpmdb.sqlite")
    assert sorted((p.name, p.version, p.source_name, p.source_version) for p in packages) == [
        ("tinya", "2:1.2.3-4.el9", "tinya", "2:1.2.3-4.el9"),
        ("tinyb", "0.9-1", "tinyb", "0.9-1"),
        ("tinyb-extra", "0.9-1", "tinyb", "0.9-1"),
        ("tinyc", "0:10.0~rc1-0.1.fc40", "tinyc", "0:10.0~rc1-0.1.fc40"),
    ]


def test_rpm_sqlite_at_the_sysimage_path(rpm_root: Path, tmp_path: Path) -> None:
    # Given the same database where newer Fedora and SUSE keep it
    target = tmp_path / "usr/lib/sysimage/rpm/rpmdb.sqlite"
    target.parent.mkdir(parents=True)
    shutil.copy(rpm_root / "var/lib/rpm/rpmdb.sqlite", target)

    # When it is parsed / Then the same four packages are found there
    packages = parse_as(RpmCataloger(), "usr/lib/sysimage/rpm/rpmdb.sqlite", target)
    assert len(packages) == 4
    assert {p.path for p in packages} == {"usr/lib/sysimage/rpm/rpmdb.sqlite"}


def make_bdb(rpm_root: Path, target: Path, page_size: int, order: str = "<") -> None:
    """Load the headers rpm stored in rpmdb.sqlite into a Berkeley DB hash ``Packages``,
    keyed as rpm keys it: record 0 holds the next header number, then one record per
    header, numbers in the byte order of the writing machine (``order``, as struct's)."""
    connection = sqlite3.connect(rpm_root / "var/lib/rpm/rpmdb.sqlite")
    rows = connection.execute("SELECT hnum, blob FROM Packages").fetchall()
    connection.close()
    lorder = 1234 if order == "<" else 4321
    lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={page_size}"]
    lines += [f"db_lorder={lorder}", "HEADER=END"]
    records = [(0, struct.pack(order + "I", max(r[0] for r in rows) + 1))]
    records += [(hnum, blob) for hnum, blob in rows]
    for key, value in records:
        lines += [" " + struct.pack(order + "I", key).hex(), " " + value.hex()]
    lines.append("DATA=END")
    dump = target.parent / "Packages.dump"
    dump.write_text("\n".join(lines) + "\n")
    run(tool("db5.3_load"), "-f", str(dump), str(target))
    dump.unlink()


@pytest.mark.parametrize(
    ("page_size", "order"),
    [(512, "<"), (4096, "<"), (1024, ">")],
    ids=["512", "4096", "big-endian"],
)
def test_rpm_berkeley_db_matches_rpm_query(
    rpm_root: Path, tmp_path: Path, page_size: int, order: str
) -> None:
    # Given a Berkeley DB Packages made by db5.3_load (also as a big-endian machine
    # would write it), which rpm reads back itself
    dbpath = tmp_path / "var/lib/rpm"
    dbpath.mkdir(parents=True)
    make_bdb(rpm_root, dbpath / "Packages", page_size, order)
    listing = rpm_listing(dbpath, "--define", "_db_backend bdb_ro")
    assert listing == rpm_listing(rpm_root / "var/lib/rpm")
    # ... where headers sit on chains of overflow pages (type 7)
    data = (dbpath / "Packages").read_bytes()
    page_types = [data[start + 25] for start in range(0, len(data), page_size)]
    assert page_types.count(7) > len(SPECS) + 4

    # When the image tree is cataloged
    packages = catalog_tree(tmp_path)

    # Then the packages are those rpm lists
    check_against_rpm(packages, listing, "var/lib/rpm/Packages")


def test_rpm_truncated_header_is_invalid_content(rpm_root: Path, tmp_path: Path) -> None:
    # Given an rpmdb.sqlite in which one header blob lost its end
    target = tmp_path / "rpmdb.sqlite"
    shutil.copy(rpm_root / "var/lib/rpm/rpmdb.sqlite", target)
    connection = sqlite3.connect(target)
    with connection:
        connection.execute("UPDATE Packages SET blob = substr(blob, 1, 100) WHERE hnum = 2")
    connection.close()

    # When it is parsed / Then the error names the file and the record
    with pytest.raises(InvalidContent, match=r"rpmdb.sqlite: record 2: rpm header truncated"):
        parse_as(RpmCataloger(), "var/lib/rpm/rpmdb.sqlite", target)


def test_rpm_header_with_unterminated_string_is_invalid(rpm_root: Path) -> None:
    # Given a real header cut just after the start of its NAME string, counts adjusted
    # so that the blob is consistent but the string runs off the end of the data
    connection = sqlite3.connect(rpm_root / "var/lib/rpm/rpmdb.sqlite")
    blob = connection.execute("SELECT blob FROM Packages WHERE hnum = 1").fetchone()[0]
    connection.close()
    entries, _ = struct.unpack_from(">II", blob)
    index = blob[8 : 8 + 16 * entries]
    name_offset = next(
        offset
        for tag, _, offset, _ in struct.iter_unpack(">IIiI", index)
        if tag == 1000  # NAME
    )
    data = blob[8 + 16 * entries :][: name_offset + 2]
    cut = struct.pack(">II", entries, len(data)) + index + data
    assert header_package(blob, "x", "x") is not None

    # When it is decoded / Then it is refused, not read out of bounds
    with pytest.raises(InvalidContent, match="record 1: rpm tag 1000 string is not terminated"):
        header_package(cut, "x", "x: record 1")


def test_rpm_truncated_berkeley_db_is_invalid_content(rpm_root: Path, tmp_path: Path) -> None:
    # Given a Packages file cut in the middle of a page
    full = tmp_path / "Packages"
    make_bdb(rpm_root, full, 4096)
    data = full.read_bytes()
    truncated = data[: len(data) // 2 + 100]

    # When it is parsed / Then the error names the file
    with pytest.raises(InvalidContent, match=r"var/lib/rpm/Packages: "):
        parse_as(RpmCataloger(), "var/lib/rpm/Packages", truncated)


def test_rpm_garbage_database_is_invalid_content() -> None:
    # Given files at the rpm database paths that are neither SQLite nor Berkeley DB
    # When they are parsed / Then both are refused by name
    with pytest.raises(InvalidContent, match=r"var/lib/rpm/Packages: not a Berkeley DB"):
        parse_as(RpmCataloger(), "var/lib/rpm/Packages", b"\0" * 4096)
    with pytest.raises(InvalidContent, match=r"rpmdb.sqlite"):
        parse_as(RpmCataloger(), "var/lib/rpm/rpmdb.sqlite", b"SQLite format 3\0" + b"\1" * 4000)


# -- Python -----------------------------------------------------------------------------------


def test_python_dist_info_and_egg_info(tmp_path: Path) -> None:
    # Given a dist-info METADATA (folded header, a body that looks like headers), an
    # egg-info directory's PKG-INFO, a single-file egg-info and files that are not metadata
    write_tree(
        tmp_path,
        {
            "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/METADATA": (
                "Metadata-Version: 2.1\nName:  requests \nVersion: 2.31.0\n"
                "License: Apache 2.0\n        with a folded line\n"
                "Requires-Dist: idna (<4,>=2.5)\n\nName: not-the-name\nVersion: 0\n"
            ),
            "usr/lib/python3/dist-packages/requests-2.31.0.dist-info/RECORD": "x,,\n",
            "usr/local/lib/python3.11/site-packages/Flask_Foo.egg-info/PKG-INFO": (
                "Metadata-Version: 1.1\nName: Flask_Foo\nVersion: 0.1.dev0\n"
            ),
            "usr/lib/python3/dist-packages/distro_info-1.5.egg-info": (
                "Metadata-Version: 1.2\nName: distro-info\nVersion: 1.5+deb12u1\n"
            ),
        },
    )

    # When the tree is cataloged
    packages = catalog_tree(tmp_path)

    # Then each distribution is reported by its headers, stripped and otherwise verbatim
    assert sorted(triples(packages)) == [
        (PYTHON, "Flask_Foo", "0.1.dev0"),
        (PYTHON, "distro-info", "1.5+deb12u1"),
        (PYTHON, "requests", "2.31.0"),
    ]


def test_python_metadata_without_version_is_invalid() -> None:
    # Given a METADATA without Version / When parsed / Then refused by name
    with pytest.raises(InvalidContent, match=r"x.dist-info/METADATA: .*without Name or Version"):
        parse_as(PythonCataloger(), "x.dist-info/METADATA", b"Name: x\n\nVersion: 1\n")


# -- npm --------------------------------------------------------------------------------------


def test_npm_nested_node_modules(tmp_path: Path) -> None:
    # Given an app with nested and scoped packages, a manifest without a version, and
    # package.json files that belong to a package's tests, not to node_modules
    def manifest(**fields: str) -> str:
        return json.dumps({**fields, "description": "x", "dependencies": {"y": "^1"}})

    app = "usr/src/app"
    write_tree(
        tmp_path,
        {
            f"{app}/package.json": manifest(name="app", version="1.0.0"),
            f"{app}/node_modules/express/package.json": manifest(name="express", version="4.18.2"),
            f"{app}/node_modules/express/node_modules/debug/package.json": manifest(
                name="debug", version="2.6.9"
            ),
            f"{app}/node_modules/@babel/core/package.json": manifest(
                name="@babel/core", version="7.23.2"
            ),
            f"{app}/node_modules/express/test/fixtures/package.json": manifest(
                name="fixture", version="0.0.0"
            ),
            f"{app}/node_modules/nameless/package.json": manifest(name="nameless"),
            "usr/lib/node_modules/npm/package.json": manifest(name="npm", version="9.8.1"),
        },
    )

    # When the tree is cataloged
    packages = catalog_tree(tmp_path)

    # Then only installed packages with a name and a version are reported
    assert sorted(triples(packages)) == [
        (NODEJS, "@babel/core", "7.23.2"),
        (NODEJS, "debug", "2.6.9"),
        (NODEJS, "express", "4.18.2"),
        (NODEJS, "npm", "9.8.1"),
    ]


def test_npm_broken_json_is_invalid() -> None:
    # Given a manifest that is not JSON / When parsed / Then refused by name
    with pytest.raises(InvalidContent, match=r"node_modules/a/package.json: not JSON"):
        parse_as(NpmCataloger(), "node_modules/a/package.json", b'{"name": "a",')


# -- Go ---------------------------------------------------------------------------------------

GO_MODULES = {
    # served by the file proxy: (path, version) -> files
    ("example.com/quote", "v1.4.2"): {
        "go.mod": "module example.com/quote\n\ngo 1.19\n",
        "quote.go": 'package quote\n\nfunc Quote() string { return "quoted" }\n',
    },
    # a fork that stands in for example.com/legacy, so it declares that path
    ("example.com/fork", "v1.1.0"): {
        "go.mod": "module example.com/legacy\n\ngo 1.19\n",
        "legacy.go": 'package legacy\n\nfunc Name() string { return "fork" }\n',
    },
}

GO_APP = {
    "greet/go.mod": "module example.com/greet\n\ngo 1.19\n",
    "greet/greet.go": 'package greet\n\nfunc Hello() string { return "hello" }\n',
    "app/go.mod": """\
module example.com/app

go 1.19

require (
	example.com/greet v0.0.0-20240101000000-abcdefabcdef
	example.com/legacy v1.0.0
	example.com/quote v1.4.2
)

replace example.com/greet => ../greet

replace example.com/legacy v1.0.0 => example.com/fork v1.1.0
""",
    "app/main.go": """\
package main

import (
	"fmt"

	"example.com/greet"
	"example.com/legacy"
	"example.com/quote"
)

func main() { fmt.Println(greet.Hello(), legacy.Name(), quote.Quote()) }
""",
}


def write_go_proxy(proxy: Path) -> None:
    """A GOPROXY=file:// tree: list, .info, .mod and .zip for each module version."""
    for (module, version), files in GO_MODULES.items():
        versions = proxy / module / "@v"
        versions.mkdir(parents=True)
        (versions / "list").write_text(f"{version}\n")
        info = {"Version": version, "Time": "2024-01-01T00:00:00Z"}
        (versions / f"{version}.info").write_text(json.dumps(info))
        (versions / f"{version}.mod").write_text(files["go.mod"])
        with zipfile.ZipFile(versions / f"{version}.zip", "w") as archive:
            for name, text in files.items():
                archive.writestr(f"{module}@{version}/{name}", text)


@pytest.fixture(scope="session")
def go_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The app built by the Go toolchain: plain, stripped of symbols, and for Windows."""
    go = tool("go")
    work = tmp_path_factory.mktemp("go")
    write_go_proxy(work / "proxy")
    write_tree(work, GO_APP)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GOPATH": str(work / "gopath"),
        # The shared build cache: cross-compiling the standard library for the Windows
        # binary takes seconds the first time only.
        "GOCACHE": os.environ.get("GOCACHE")
        or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "go-build"),
        "GOENV": "off",
        "GOPROXY": f"file://{work / 'proxy'}",
        "GOSUMDB": "off",
        "GOFLAGS": "-mod=mod -modcacherw",
        "CGO_ENABLED": "0",
    }
    binaries = {"plain": work / "app-plain", "stripped": work / "app-stripped"}
    run(go, "build", "-o", str(binaries["plain"]), ".", cwd=work / "app", env=env)
    run(
        go,
        "build",
        "-ldflags=-s -w",
        "-o",
        str(binaries["stripped"]),
        ".",
        cwd=work / "app",
        env=env,
    )
    binaries["windows"] = work / "app.exe"
    windows = {**env, "GOOS": "windows"}
    run(go, "build", "-o", str(binaries["windows"]), ".", cwd=work / "app", env=windows)
    binaries["listing"] = work / "listing.txt"
    binaries["listing"].write_text(run(go, "version", "-m", str(binaries["plain"]), env=env))
    return binaries


GO_EXPECTED = [
    (GO, "example.com/app", "(devel)"),
    (GO, "example.com/greet", "v0.0.0-20240101000000-abcdefabcdef"),
    (GO, "example.com/fork", "v1.1.0"),
    (GO, "example.com/quote", "v1.4.2"),
]


def test_go_binary_modules(go_binaries: dict[str, Path]) -> None:
    # Given a Go binary whose build information go version -m shows as: the main
    # module, a dependency replaced by a local directory, one replaced by another
    # module and a plain one
    listing = [line.split("\t")[1:4] for line in go_binaries["listing"].read_text().splitlines()]
    assert ["mod", "example.com/app", "(devel)"] in listing
    assert ["dep", "example.com/greet", "v0.0.0-20240101000000-abcdefabcdef"] in listing
    assert ["=>", "../greet", "(devel)"] in listing
    assert ["dep", "example.com/legacy", "v1.0.0"] in listing
    assert ["=>", "example.com/fork", "v1.1.0"] in listing
    assert ["dep", "example.com/quote", "v1.4.2"] in listing

    # When the plain, the stripped and the Windows binary are parsed
    for variant in ("plain", "stripped", "windows"):
        packages = parse_as(GoCataloger(), "usr/local/bin/app", go_binaries[variant])

        # Then the main module and every dependency are reported, replacements applied
        assert triples(packages) == GO_EXPECTED, variant
        assert {p.path for p in packages} == {"usr/local/bin/app"}


def test_go_binary_without_section_headers_is_searched(go_binaries: dict[str, Path]) -> None:
    # Given the Go binary with its ELF section header offset zeroed
    data = bytearray(go_binaries["plain"].read_bytes())
    data[0x28:0x30] = bytes(8)

    # When it is parsed / Then the build information is found by its magic
    assert triples(parse_as(GoCataloger(), "app", bytes(data))) == GO_EXPECTED


# The sentinels the Go linker puts around the module information.
MODINFO_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
MODINFO_END = bytes.fromhex("f932433186182072008242104116d8f2")


def elf_sections(binary: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (address, file offset, size), as readelf lists them."""
    found = {}
    for line in run(tool("readelf"), "-SW", str(binary)).splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[0].startswith("[") and fields[1].startswith("."):
            found[fields[1]] = (int(fields[3], 16), int(fields[4], 16), int(fields[5], 16))
    return found


def test_go_binary_with_pre_1_18_pointer_build_info(go_binaries: dict[str, Path]) -> None:
    # Given the real binary rewritten to the layout of Go before 1.18: the build
    # information header points at two Go string headers (address, length), here
    # placed at the start of .rodata together with the strings they describe
    binary = go_binaries["plain"]
    sections = elf_sections(binary)
    _, info_offset, _ = sections[".go.buildinfo"]
    rodata_address, rodata_offset, _ = sections[".rodata"]
    version = b"go1.16.15"
    modinfo = (
        MODINFO_START
        + b"path\texample.com/old/cmd/old\nmod\texample.com/old\tv0.1.0\th1:x=\n"
        + b"dep\tgolang.org/x/text\tv0.3.7\th1:y=\n"
        + MODINFO_END
    )
    strings = struct.pack("<QQ", rodata_address + 32, len(version)) + struct.pack(
        "<QQ", rodata_address + 32 + len(version), len(modinfo)
    )
    header = (
        b"\xff Go buildinf:"
        + bytes([8, 0])
        + struct.pack("<QQ", rodata_address, rodata_address + 16)
    )
    data = bytearray(binary.read_bytes())
    data[info_offset : info_offset + 32] = header
    blob = strings + version + modinfo
    data[rodata_offset : rodata_offset + len(blob)] = blob

    # When it is parsed / Then the pointers are followed to the modules
    assert triples(parse_as(GoCataloger(), "app", bytes(data))) == [
        (GO, "example.com/old", "v0.1.0"),
        (GO, "golang.org/x/text", "v0.3.7"),
    ]


def test_non_go_elf_reports_nothing() -> None:
    # Given an ELF binary that is not Go (this machine's ls)
    ls = Path(tool("ls")).resolve()

    # When it is parsed / Then it is wanted (ELF) but has no modules
    assert parse_as(GoCataloger(), "bin/ls", ls) == []
    assert not GoCataloger().wants("bin/script", b"#!/bin/sh\n")


# -- Java -------------------------------------------------------------------------------------


def jar(entries: dict[str, bytes | str]) -> bytes:
    """A zip archive holding ``entries``, as a build tool would write it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n")
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def pom(group: str, artifact: str, version: str) -> tuple[str, str]:
    path = f"META-INF/maven/{group}/{artifact}/pom.properties"
    text = (
        "#Generated by Maven\n#Tue Jan 02 00:00:00 UTC 2024\n"
        f"artifactId={artifact}\ngroupId={group}\nversion={version}\n"
    )
    return path, text


def test_jar_with_nested_jars(tmp_path: Path) -> None:
    # Given a WAR with its own coordinates, a library JAR in WEB-INF/lib, a shaded JAR
    # holding two coordinates, and archives nested four levels deep
    level4 = jar(dict([pom("org.deep", "level4", "4.0")]))
    level3 = jar(dict([pom("org.deep", "level3", "3.0")], **{"lib/level4.jar": level4}))
    shaded = jar(
        dict([pom("com.acme", "shaded", "2.1"), pom("com.google.guava", "guava", "32.1.2-jre")])
    )
    war = jar(
        dict(
            [pom("com.acme", "webapp", "1.0.0")],
            **{
                "WEB-INF/lib/jackson-core-2.15.2.jar": jar(
                    dict([pom("com.fasterxml.jackson.core", "jackson-core", "2.15.2")])
                ),
                "WEB-INF/lib/shaded.jar": shaded,
                "WEB-INF/lib/nested.jar": jar({"lib/level3.jar": level3}),
                "WEB-INF/lib/not-a-jar.jar": "plain text",
            },
        )
    )
    write_tree(tmp_path, {"opt/app/webapp.war": war, "opt/app/README.jar.txt": "no"})

    # When the tree is cataloged
    packages = catalog_tree(tmp_path)

    # Then coordinates come from every archive up to three levels, none from the fourth
    assert sorted(triples(packages)) == [
        (JAR, "com.acme:shaded", "2.1"),
        (JAR, "com.acme:webapp", "1.0.0"),
        (JAR, "com.fasterxml.jackson.core:jackson-core", "2.15.2"),
        (JAR, "com.google.guava:guava", "32.1.2-jre"),
        (JAR, "org.deep:level3", "3.0"),
    ]
    assert {p.path for p in packages} == {"opt/app/webapp.war"}


def test_corrupt_jar_is_invalid_content() -> None:
    # Given a JAR cut short, and a WAR holding a corrupt JAR
    whole = jar(dict([pom("a", "b", "1")]))
    cut = whole[: len(whole) - 30]
    war = jar({"WEB-INF/lib/broken.jar": cut})

    # When they are parsed / Then each is refused, naming the archive that is broken
    with pytest.raises(InvalidContent, match=r"lib/a\.jar: unreadable zip"):
        parse_as(JavaCataloger(), "lib/a.jar", cut)
    with pytest.raises(InvalidContent, match=r"app\.war!WEB-INF/lib/broken\.jar: unreadable"):
        parse_as(JavaCataloger(), "app.war", war)


# -- hostile input ----------------------------------------------------------------------------


def mutations(data: bytes, region: tuple[int, int], count: int, seed: int) -> Iterable[bytes]:
    """``count`` copies of ``data`` with a few bytes of ``region`` changed, some cut short."""
    rng = random.Random(seed)
    for _ in range(count):
        copy = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            copy[rng.randrange(*region)] = rng.randrange(256)
        if rng.random() < 0.2:
            copy = copy[: rng.randrange(len(copy))]
        yield bytes(copy)


def assert_packages_or_invalid(cataloger: Cataloger, path: str, samples: Iterable[bytes]) -> None:
    for sample in samples:
        try:
            result = cataloger.parse(path, io.BytesIO(sample))
        except InvalidContent:
            continue
        assert all(isinstance(p, Package) for p in result)


def test_mutated_databases_give_packages_or_invalid_content(
    rpm_root: Path, go_binaries: dict[str, Path], tmp_path: Path
) -> None:
    # Given real files of each binary format with random bytes changed
    make_bdb(rpm_root, tmp_path / "Packages", 512)
    bdb = (tmp_path / "Packages").read_bytes()
    sqlite = (rpm_root / "var/lib/rpm/rpmdb.sqlite").read_bytes()
    go = go_binaries["plain"].read_bytes()
    buildinfo = go.find(b"\xff Go buildinf:")
    section_headers = struct.unpack_from("<Q", go, 0x28)[0]
    war = jar({"WEB-INF/lib/x.jar": jar(dict([pom("a", "b", "1")])), "y.txt": "y"})

    # When each is parsed / Then it gives packages or InvalidContent, never another error
    rpm = RpmCataloger()
    assert_packages_or_invalid(rpm, "var/lib/rpm/Packages", mutations(bdb, (0, len(bdb)), 300, 1))
    assert_packages_or_invalid(
        rpm, "var/lib/rpm/rpmdb.sqlite", mutations(sqlite, (100, len(sqlite)), 60, 2)
    )
    for seed, region in enumerate(
        [(0, 64), (section_headers, len(go)), (buildinfo, buildinfo + 512)]
    ):
        assert_packages_or_invalid(GoCataloger(), "app", mutations(go, region, 100, 10 + seed))
    assert_packages_or_invalid(JavaCataloger(), "a.war", mutations(war, (0, len(war)), 300, 3))
