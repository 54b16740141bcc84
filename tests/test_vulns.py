"""Vulnerabilities of scanned images, end to end: OSV records written by the test are
imported through the ``regscan vulndb import`` command or a configured source served over
HTTP, images with known packages are scanned, and each image's findings are read back
exactly through ``GET /registry``. When the data changes, stored images are re-matched
without a single request to the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models import Image, ImageTarget, PackageFinding, Tag
from models import vuln_records as store
from models.findings import current_at
from testbed.images import Pusher
from testbed.osv_export import OsvExportServer
from testbed.proxy import FaultProxy
from testbed.services import RegistryServer, free_port
from testbed.stack import Api, Stack, wait_for
from tests.test_catalogers import rpm_listing
from tests.test_inventory import ALPINE_OS_RELEASE, dist_info, rpm_root, scan_one, spec

__all__ = ["rpm_root"]  # the image root rpm wrote, shared with the inventory tests

CRITICAL_V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
HIGH_V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"
MEDIUM_V3 = "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:L/A:N"
HIGH_V4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N"
BOOKWORM_OS_RELEASE = (
    b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    b'VERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n'
)
ROCKY_OS_RELEASE = b'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\n'
JAMMY_OS_RELEASE = (
    b'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\n'
)
FIRST, LATER = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"


# -- the service parts these tests add -------------------------------------------------


@pytest.fixture(scope="module")
def rematcher(stack: Stack) -> None:
    """A worker on the re-match queue, in small batches so a re-match takes several."""
    if "rematch" not in stack.procs:
        stack.start_worker("rematch", "rematch", 2, env={"REGSCAN_REMATCH_BATCH": "2"})


def import_cli(stack: Stack, location: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regscan.cli", "vulndb", "import", str(location)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- records and images ------------------------------------------------------------------


class Ids:
    """Package names and CVE ids no other test uses, so tests sharing a database do not
    see each other's findings."""

    def __init__(self, name: str) -> None:
        self.prefix = name
        self.seed = int(name[1:], 16) % 10**7

    def pkg(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def cve(self, n: int) -> str:
        return f"CVE-2099-{self.seed:07d}{n:02d}"


def osv_record(rid: str, *affected: dict, modified: str = FIRST, **fields: Any) -> dict:
    return {"id": rid, "modified": modified, "affected": list(affected), **fields}


def hit(ecosystem: str, name: str, *events: dict, kind: str = "ECOSYSTEM", **extra: Any) -> dict:
    ranges = [{"type": kind, "events": list(events)}] if events else []
    return {"package": {"ecosystem": ecosystem, "name": name}, "ranges": ranges, **extra}


def cvss(kind: str, vector: str) -> list[dict[str, str]]:
    return [{"type": kind, "score": vector}]


def write_records(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, rec in enumerate(records):
        (folder / f"{n:02d}-{rec.get('id', 'none')}.json").write_text(json.dumps(rec))
    return folder


def dpkg_status(*stanzas: tuple[str, str, str]) -> bytes:
    text = ""
    for package, version, source in stanzas:
        text += f"Package: {package}\nStatus: install ok installed\nVersion: {version}\n"
        text += f"Source: {source}\n\n" if source else "\n"
    return text.encode()


def findings(api: Api, host: str, repo: str, tag: str) -> set[tuple[str, str, str, str, str]]:
    [result] = api.results(name=f"{host}/{repo}:{tag}")
    return {
        (v["cve"], v["packageName"], v["packageVersion"], v["severity"], v["status"])
        for v in result["vulnerabilities"]
    }


# -- import, scan, change, re-match ----------------------------------------------------


def first_records(i: Ids) -> list[dict]:
    fix_foo = ({"introduced": "0"}, {"fixed": "1:2.3-5"})
    return [
        osv_record(
            i.cve(1),
            hit("Debian:12", i.pkg("foo"), *fix_foo),
            severity=cvss("CVSS_V3", CRITICAL_V3),
            published=FIRST,
        ),
        # The Debian advisory for the same CVE: one finding, not two
        osv_record(
            "DSA-" + i.cve(1)[9:], hit("Debian:12", i.pkg("foo"), *fix_foo), aliases=[i.cve(1)]
        ),
        # Fixed at 2.4-1 without an epoch: 1:2.3-4 is newer, so not affected
        osv_record(
            i.cve(2), hit("Debian:12", i.pkg("foo"), {"introduced": "0"}, {"fixed": "2.4-1"})
        ),
        # "~": 1.0~rc1-1 is older than the fix 1.0-1
        osv_record(
            i.cve(3),
            hit(
                "Debian:12",
                i.pkg("bar"),
                {"introduced": "0"},
                {"fixed": "1.0-1"},
                database_specific={"urgency": "low"},
            ),
        ),
        # last_affected == installed: affected, no fix; plain "Debian" applies to every release
        osv_record(
            i.cve(4),
            hit("Debian", i.pkg("baz"), {"introduced": "0"}, {"last_affected": "3.1-2"}),
            severity=cvss("CVSS_V4", HIGH_V4),
        ),
        # fixed == installed: not affected
        osv_record(
            i.cve(5), hit("Debian:12", i.pkg("qux"), {"introduced": "0"}, {"fixed": "2.0-1"})
        ),
        # withdrawn: never reported
        osv_record(i.cve(6), hit("Debian:12", i.pkg("zed"), {"introduced": "0"}), withdrawn=FIRST),
        # an explicit versions list
        osv_record(
            i.cve(7),
            hit("Debian:12", i.pkg("lst"), versions=["0.9-2", "0.9-3"]),
            database_specific={"severity": "MODERATE"},
        ),
        # another release: not this image's
        osv_record(i.cve(8), hit("Debian:11", i.pkg("foo"), {"introduced": "0"})),
        # not valid OSV (no introduced event): reported and skipped
        osv_record(i.cve(9), hit("Debian:12", i.pkg("foo"), {"fixed": "9"})),
        osv_record(
            i.cve(10),
            hit("Alpine:v3.19", i.pkg("ssl"), {"introduced": "0"}, {"fixed": "3.1.4-r6"}),
            severity=cvss("CVSS_V3", MEDIUM_V3),
        ),
        osv_record(i.cve(11), hit("Alpine:v3.18", i.pkg("musl"), {"introduced": "0"})),
        osv_record(
            "GHSA-" + i.prefix,
            hit("PyPI", i.pkg("jinja2"), {"introduced": "0"}, {"fixed": "3.1.3"}),
            aliases=[i.cve(12)],
            database_specific={"severity": "HIGH"},
        ),
        osv_record(
            "PYSEC-" + i.prefix,
            hit("PyPI", i.pkg("jinja2"), {"introduced": "0"}, {"fixed": "3.1.3"}),
            aliases=[i.cve(12)],
        ),
        osv_record(
            "GHSA-npm-" + i.prefix,
            hit("npm", i.pkg("lodash"), {"introduced": "0"}, {"fixed": "4.17.21"}, kind="SEMVER"),
            severity=cvss("CVSS_V3", HIGH_V3),
        ),
    ]


def changed_records(i: Ids) -> list[dict]:
    return [
        # newer: the fix is now the installed version, so no longer affected
        osv_record(
            i.cve(3),
            hit("Debian:12", i.pkg("bar"), {"introduced": "0"}, {"fixed": "1.0~rc1-1"}),
            modified=LATER,
        ),
        # older than the stored one: ignored
        osv_record(
            i.cve(4),
            hit("Debian", i.pkg("baz"), {"introduced": "0"}, {"fixed": "3.1-1"}),
            modified="2025-01-01T00:00:00Z",
        ),
        # new
        osv_record(
            i.cve(13),
            hit(
                "Debian:12",
                i.pkg("qux"),
                {"introduced": "0"},
                {"fixed": "2.0-2"},
                database_specific={"urgency": "medium"},
            ),
        ),
        # newer and withdrawn: its finding goes away
        osv_record(
            "GHSA-npm-" + i.prefix,
            hit("npm", i.pkg("lodash"), {"introduced": "0"}, {"fixed": "4.17.21"}, kind="SEMVER"),
            modified=LATER,
            withdrawn=LATER,
        ),
    ]


def push_images(pusher: Pusher, repo: str, i: Ids) -> None:
    status = dpkg_status(
        (f"lib{i.pkg('foo')}1", "1:2.3-4", i.pkg("foo")),
        (f"{i.pkg('foo')}-utils", "1:2.3-4", i.pkg("foo")),
        (i.pkg("bar"), "1.0~rc1-1", ""),
        (i.pkg("baz"), "3.1-2", ""),
        (i.pkg("qux"), "2.0-1", ""),
        (i.pkg("zed"), "1.0-1", ""),
        (i.pkg("lst"), "0.9-3", ""),
    )
    pusher.push_image(
        repo, "debian", {"etc/os-release": BOOKWORM_OS_RELEASE, "var/lib/dpkg/status": status}
    )
    installed = (
        f"P:lib{i.pkg('ssl')}3\nV:3.1.4-r5\no:{i.pkg('ssl')}\n\n"
        f"P:{i.pkg('musl')}\nV:1.2.4-r2\no:{i.pkg('musl')}\n"
    )
    files = {"etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": installed.encode()}
    pusher.push_image(repo, "alpine", files)
    lodash = json.dumps({"name": i.pkg("lodash"), "version": "4.17.20"}).encode()
    files = {
        **dist_info(f"{i.prefix}_Jinja2", "3.1.2"),
        f"app/node_modules/{i.pkg('lodash')}/package.json": lodash,
    }
    pusher.push_image(repo, "app", files)


def test_imported_data_gives_exact_findings_and_a_change_rematches_without_the_registry(
    api: Api, stack: Stack, pusher: Pusher, registry: RegistryServer, name: str, rematcher, tmp_path
):
    i, repo = Ids(name), f"{name}/vulns"
    proxy = FaultProxy.for_url(registry.url)
    api.set_specs(spec(f"http://{proxy.host}", f"{name}/*"))
    push_images(pusher, repo, i)
    try:
        # Given OSV records imported with the command
        done = import_cli(stack, write_records(tmp_path / "first", first_records(i)))
        assert done.returncode == 0, done.stderr
        assert "records read: 14 (" in done.stdout
        assert "Debian:12" in done.stdout and "Alpine:v3.19" in done.stdout
        assert "skipped 1 invalid records" in done.stdout
        assert "no 'introduced' event" in done.stdout
        assert "changed: yes" in done.stdout

        # When the images are scanned
        for tag in ("debian", "alpine", "app"):
            scan_one(api, proxy, repo, tag)

        # Then each reports exactly its vulnerabilities
        foo, bar, baz, lst = (i.pkg(p) for p in ("foo", "bar", "baz", "lst"))
        assert findings(api, proxy.host, repo, "debian") == {
            (i.cve(1), foo, "1:2.3-4", "critical", "fixed in 1:2.3-5"),
            (i.cve(3), bar, "1.0~rc1-1", "low", "fixed in 1.0-1"),
            (i.cve(4), baz, "3.1-2", "high", "open"),
            (i.cve(7), lst, "0.9-3", "medium", "open"),
        }
        assert findings(api, proxy.host, repo, "alpine") == {
            (i.cve(10), i.pkg("ssl"), "3.1.4-r5", "medium", "fixed in 3.1.4-r6"),
        }
        app_before = {
            (i.cve(12), f"{name}_Jinja2", "3.1.2", "high", "fixed in 3.1.3"),
            ("GHSA-npm-" + name, i.pkg("lodash"), "4.17.20", "high", "fixed in 4.17.21"),
        }
        assert findings(api, proxy.host, repo, "app") == app_before
        [debian] = api.results(name=f"{proxy.host}/{repo}:debian")
        assert debian["vulnerabilitiesCount"] == 4
        assert debian["vulnerabilityDistribution"] == {
            "critical": 1, "high": 1, "medium": 1, "low": 1, "total": 4,
        }  # fmt: skip
        critical = next(v for v in debian["vulnerabilities"] if v["cve"] == i.cve(1))
        assert critical["cvss"] == 9.8 and critical["vecStr"] == CRITICAL_V3
        assert critical["binaryPkgs"] == sorted([f"lib{foo}1", f"{foo}-utils"])
        assert critical["link"] == f"https://osv.dev/vulnerability/{i.cve(1)}"
        assert {"Has fix", "Critical severity"} <= set(critical["riskFactors"])
        assert debian["vulnerabilities"][0]["cve"] == i.cve(1)  # most severe first
        # and the stored inventory rows answer fleet queries by (source) package
        holding = api.results(package=foo)
        assert [(r["repoTag"]["repo"], r["repoTag"]["tag"]) for r in holding] == [(repo, "debian")]

        # When the data changes: a newer record, an older one, a new one, a withdrawal
        requests_before = len(proxy.requests)
        done = import_cli(stack, write_records(tmp_path / "changed", changed_records(i)))
        assert done.returncode == 0, done.stderr
        assert "(1 new, 2 newer, 1 unchanged)" in done.stdout

        # Then the stored images are re-matched, and the results change accordingly
        debian_after = {
            (i.cve(1), foo, "1:2.3-4", "critical", "fixed in 1:2.3-5"),
            (i.cve(4), baz, "3.1-2", "high", "open"),
            (i.cve(7), lst, "0.9-3", "medium", "open"),
            (i.cve(13), i.pkg("qux"), "2.0-1", "medium", "fixed in 2.0-2"),
        }
        wait_for(
            lambda: findings(api, proxy.host, repo, "debian") == debian_after,
            60,
            "the Debian image to be re-matched",
        )
        wait_for(
            lambda: (
                findings(api, proxy.host, repo, "app")
                == app_before
                - {("GHSA-npm-" + name, i.pkg("lodash"), "4.17.20", "high", "fixed in 4.17.21")}
            ),
            60,
            "the app image to be re-matched",
        )
        assert len(findings(api, proxy.host, repo, "alpine")) == 1
        # ... without one request to the registry
        assert len(proxy.requests) == requests_before

        # And importing the same data again changes nothing
        again = import_cli(stack, tmp_path / "changed")
        assert again.returncode == 0 and "changed: no" in again.stdout
    finally:
        proxy.close()


def test_rpm_and_ubuntu_images_are_matched_in_their_release_by_source_package(
    api: Api, stack: Stack, pusher: Pusher, registry: RegistryServer, name: str, rpm_root, tmp_path
):
    # Given a Rocky Linux 9 image whose rpmdb.sqlite rpm itself wrote, and an Ubuntu 22.04
    # image, both pushed to the registry
    i, repo = Ids(name), f"{name}/distros"
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    rpmdb = rpm_root / "var/lib/rpm/rpmdb.sqlite"
    files = {"etc/os-release": ROCKY_OS_RELEASE, "var/lib/rpm/rpmdb.sqlite": rpmdb.read_bytes()}
    pusher.push_image(repo, "rocky", files)
    installed = {n: v for n, v, _e, _s in rpm_listing(rpm_root / "var/lib/rpm")}
    assert (installed["tinya"], installed["tinyb"]) == ("2:1.2.3-4.el9", "0.9-1")
    assert installed["tinyc"] == "0:10.0~rc1-0.1.fc40"
    status = dpkg_status(
        (f"lib{i.pkg('tls')}1", "1.2-1ubuntu0.1", i.pkg("tls")), (i.pkg("old"), "2.0-1", "")
    )
    files = {"etc/os-release": JAMMY_OS_RELEASE, "var/lib/dpkg/status": status}
    pusher.push_image(repo, "ubuntu", files)

    # And records of their distributions, of other releases and of a sibling distribution
    def rocky(release: str, package: str, *events: dict) -> dict:
        return hit(f"Rocky Linux{release}", package, {"introduced": "0"}, *events)

    records = [
        # by source rpm: tinyb and its subpackage tinyb-extra are one finding
        osv_record(
            i.cve(1), rocky(":9", "tinyb", {"fixed": "0.9-2"}), severity=cvss("CVSS_V3", HIGH_V3)
        ),
        # fixed == installed: not affected
        osv_record(i.cve(2), rocky(":9", "tinya", {"fixed": "2:1.2.3-4.el9"})),
        # release 4.el9 is older than 10.el9: numbers compare as numbers
        osv_record(i.cve(3), rocky(":9", "tinya", {"fixed": "2:1.2.3-10.el9"})),
        # epoch 2 is newer than any epoch-1 version
        osv_record(i.cve(4), rocky(":9", "tinya", {"fixed": "1:9.9-1"})),
        # 10.0~rc1 comes before 10.0
        osv_record(i.cve(5), rocky(":9", "tinyc", {"fixed": "10.0-1"})),
        # another release, and another distribution: not this image's
        osv_record(i.cve(6), rocky(":8", "tinyb")),
        osv_record(i.cve(7), hit("AlmaLinux:9", "tinyb", {"introduced": "0"})),
        # no release: every Rocky Linux; last_affected == installed
        osv_record(i.cve(8), rocky("", "tinyc", {"last_affected": "0:10.0~rc1-0.1.fc40"})),
        # Ubuntu names its releases with ":LTS"; the severity is Ubuntu's own priority
        osv_record(
            i.cve(9),
            hit("Ubuntu:22.04:LTS", i.pkg("tls"), {"introduced": "0"}, {"fixed": "1.2-1ubuntu0.2"}),
            severity=[{"type": "Ubuntu", "score": "high"}],
        ),
        osv_record(i.cve(10), hit("Ubuntu:20.04:LTS", i.pkg("tls"), {"introduced": "0"})),
        # 2.0-1 sorts before the Ubuntu revision 2.0-1ubuntu1
        osv_record(
            i.cve(11),
            hit("Ubuntu:22.04", i.pkg("old"), {"introduced": "0"}, {"fixed": "2.0-1ubuntu1"}),
        ),
    ]
    done = import_cli(stack, write_records(tmp_path / "distros", records))
    assert done.returncode == 0, done.stderr

    # When both are scanned
    rocky_result = scan_one(api, registry, repo, "rocky")
    scan_one(api, registry, repo, "ubuntu")

    # Then each reports exactly the findings of its own release
    assert findings(api, registry.host, repo, "rocky") == {
        (i.cve(1), "tinyb", "0.9-1", "high", "fixed in 0.9-2"),
        (i.cve(3), "tinya", "2:1.2.3-4.el9", "", "fixed in 2:1.2.3-10.el9"),
        (i.cve(5), "tinyc", "0:10.0~rc1-0.1.fc40", "", "fixed in 10.0-1"),
        (i.cve(8), "tinyc", "0:10.0~rc1-0.1.fc40", "", "open"),
    }
    tinyb = next(v for v in rocky_result["vulnerabilities"] if v["cve"] == i.cve(1))
    assert tinyb["binaryPkgs"] == ["tinyb", "tinyb-extra"]
    assert findings(api, registry.host, repo, "ubuntu") == {
        (i.cve(9), i.pkg("tls"), "1.2-1ubuntu0.1", "high", "fixed in 1.2-1ubuntu0.2"),
        (i.cve(11), i.pkg("old"), "2.0-1", "", "fixed in 2.0-1ubuntu1"),
    }


def test_a_data_change_rewrites_only_the_images_holding_a_package_it_names(
    api: Api,
    stack: Stack,
    pusher: Pusher,
    registry: RegistryServer,
    name: str,
    rematcher,
    tmp_path,
    db,
):
    # Given two scanned Debian images, one holding foo and one bar, each with a finding
    i, repo = Ids(name), f"{name}/delta"
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    foo, bar, qux = i.pkg("foo"), i.pkg("bar"), i.pkg("qux")
    for tag, package in (("one", foo), ("two", bar)):
        status = dpkg_status((package, "1.0-1", ""))
        files = {"etc/os-release": BOOKWORM_OS_RELEASE, "var/lib/dpkg/status": status}
        pusher.push_image(repo, tag, files)
    fix = ({"introduced": "0"}, {"fixed": "1.0-2"})
    first = [
        osv_record(i.cve(1), hit("Debian:12", foo, *fix)),
        osv_record(i.cve(2), hit("Debian:12", bar, *fix)),
    ]
    assert import_cli(stack, write_records(tmp_path / "first", first)).returncode == 0
    for tag in ("one", "two"):
        scan_one(api, registry, repo, tag)
    assert findings(api, registry.host, repo, "two") == {
        (i.cve(2), bar, "1.0-1", "", "fixed in 1.0-2")
    }

    def stored(tag: str) -> tuple[list[int], int | None]:
        """The image's finding rows and the data generation they were matched against."""
        with db() as session:
            [image] = session.scalars(
                select(Image)
                .join(Tag, Tag.digest == Image.digest)
                .where(Tag.repository == repo, Tag.name == tag, Image.repository == repo)
            )
            rows = session.scalars(
                select(PackageFinding.id)
                .join(
                    ImageTarget,
                    ImageTarget.package_version_id == PackageFinding.package_version_id,
                )
                .where(ImageTarget.image_id == image.id)
            )
            return sorted(rows), current_at(image, store.findings_generation(session))

    two_rows, _ = stored("two")

    # When a record about foo changes (its fix is now the installed version)
    fixed_now = hit("Debian:12", foo, {"introduced": "0"}, {"fixed": "1.0-1"})
    later = [osv_record(i.cve(1), fixed_now, modified=LATER)]
    assert import_cli(stack, write_records(tmp_path / "later", later)).returncode == 0

    # Then the image holding foo loses its finding
    wait_for(lambda: findings(api, registry.host, repo, "one") == set(), 60, "one re-matched")
    # And the other is brought up to the new data without its findings being rewritten
    with db() as session:
        generation = store.current_generation(session)
    wait_for(lambda: stored("two")[1] == generation, 60, "two marked current")
    assert stored("two")[0] == two_rows

    # When the record about bar is re-issued naming another package instead
    moved = [osv_record(i.cve(2), hit("Debian:12", qux, *fix), modified=LATER)]
    assert import_cli(stack, write_records(tmp_path / "moved", moved)).returncode == 0

    # Then the package it no longer names loses the finding too
    wait_for(lambda: findings(api, registry.host, repo, "two") == set(), 60, "two re-matched")


def test_a_rematch_run_twice_leaves_each_finding_once(
    api: Api, stack: Stack, pusher: Pusher, registry: RegistryServer, name: str, rematcher, tmp_path
):
    # Given a scanned image and data that changes after the scan
    i, repo = Ids(name), f"{name}/twice"
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    push_images(pusher, repo, i)
    scan_one(api, registry, repo, "debian")
    assert findings(api, registry.host, repo, "debian") == set()

    # When the data is imported and a second re-match is asked for at the same time
    assert import_cli(stack, write_records(tmp_path / "d", first_records(i))).returncode == 0
    from core.settings import Settings
    from core.tasks import Publisher, make_celery

    Publisher(make_celery(Settings(redis_url=stack.env["REGSCAN_REDIS_URL"]))).rematch()

    # Then the image shows each of its four vulnerabilities once
    def listed() -> list[str]:
        [result] = api.results(name=f"{registry.host}/{repo}:debian")
        return sorted(v["cve"] for v in result["vulnerabilities"])

    expected = sorted(i.cve(n) for n in (1, 3, 4, 7))
    wait_for(lambda: listed() == expected, 60, "the image to be re-matched")
    assert listed() == expected


def test_the_import_command_explains_a_missing_path_or_an_unreachable_url(stack: Stack, tmp_path):
    missing = import_cli(stack, tmp_path / "no-such-export.zip")
    assert missing.returncode == 1
    assert f"regscan: {tmp_path / 'no-such-export.zip'} does not exist" in missing.stderr
    unreachable = import_cli(stack, f"http://127.0.0.1:{free_port()}/all.zip")
    assert unreachable.returncode == 1
    assert "cannot be reached" in unreachable.stderr
    for done in (missing, unreachable):
        assert "Traceback" not in done.stderr


def test_the_import_command_stores_the_data_and_explains_a_bad_redis_url(stack: Stack, tmp_path):
    record = osv_record("CVE-2099-9999901", hit("PyPI", "redis-url-check", {"introduced": "0"}))
    folder = write_records(tmp_path / "one", [record])
    done = subprocess.run(
        [sys.executable, "-m", "regscan.cli", "vulndb", "import", str(folder)],
        env={**stack.env, "REGSCAN_REDIS_URL": "127.0.0.1:6379"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "changed: yes" in done.stdout
    assert "'127.0.0.1:6379' is not a Redis URL" in done.stdout
    assert "Traceback" not in done.stderr


# -- configured sources ------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[OsvExportServer]:
    server = OsvExportServer([])
    yield server
    server.close()


def test_a_configured_source_is_refreshed_on_schedule_and_unchanged_data_is_not_downloaded(
    api: Api,
    stack: Stack,
    pusher: Pusher,
    registry: RegistryServer,
    name: str,
    served: OsvExportServer,
):
    # Given an image scanned before any data about it exists
    i, repo = Ids(name), f"{name}/configured"
    api.set_specs(spec(f"http://{registry.host}", f"{name}/*"))
    pusher.push_image(repo, "1", dist_info(i.pkg("requests"), "2.31.0"))
    scan_one(api, registry, repo, "1")
    assert findings(api, registry.host, repo, "1") == set()
    fixed = ({"introduced": "0"}, {"fixed": "2.32.0"})
    served.serve([osv_record(i.cve(1), hit("PyPI", i.pkg("requests"), *fixed))], '"v1"')

    # When a worker is configured with the source, refreshed every two seconds
    worker = f"refresher-{name}"
    stack.start_worker(
        worker,
        "rematch",
        2,
        env={"REGSCAN_VULNDB_SOURCES": served.url, "REGSCAN_VULNDB_REFRESH_SECONDS": "2"},
    )
    try:
        # Then the data is imported and the image re-matched
        expected = {(i.cve(1), i.pkg("requests"), "2.31.0", "", "fixed in 2.32.0")}
        wait_for(lambda: findings(api, registry.host, repo, "1") == expected, 60, "the finding")

        # And the refreshes after the first download nothing: the ETag is honoured
        wait_for(lambda: len(served.answers) >= 3, 30, "two more refreshes")
        assert served.answers[0] == 200 and set(served.answers[1:]) == {304}
        status = api.get("/api/v1/vulndb").json()
        [source] = [s for s in status["sources"] if s["location"] == served.url]
        assert (source["etag"], source["error"], source["records"]) == ('"v1"', "", 1)
        assert source["lastRefresh"] is not None
        assert status["recordsByEcosystem"]["PyPI"] >= 1 and status["generation"] >= 1

        # When the served data changes
        served.serve([osv_record(i.cve(2), hit("PyPI", i.pkg("requests"), *fixed))], '"v2"')

        # Then the next refresh downloads it and the findings follow
        expected = {
            (i.cve(1), i.pkg("requests"), "2.31.0", "", "fixed in 2.32.0"),
            (i.cve(2), i.pkg("requests"), "2.31.0", "", "fixed in 2.32.0"),
        }
        wait_for(lambda: findings(api, registry.host, repo, "1") == expected, 60, "new data")
        assert served.answers.count(200) == 2
    finally:
        stack.kill(worker)


def test_vulndb_status_needs_authentication(stack: Stack):
    anonymous = Api(stack.api.base, auth=None)
    assert anonymous.get("/api/v1/vulndb").status_code == 401
