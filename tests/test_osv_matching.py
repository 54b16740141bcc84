"""OSV records read and matched without the service: what a record says about a package
version, exactly as the OSV schema's evaluation rules say it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scanner.vulns import matching, osv
from scanner.vulns.matching import ImageOS, Target
from testbed.osv_export import OsvExportServer

NOW = datetime(2026, 11, 27, tzinfo=UTC)
CRITICAL_V3 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
MEDIUM_V3 = "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:L/A:N"
HIGH_V4 = "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N"


def record(rid: str, *affected: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": rid, "modified": "2026-01-01T00:00:00Z", "affected": list(affected), **fields}


def pkg(ecosystem: str, name: str, *events: dict[str, str], **extra: Any) -> dict[str, Any]:
    ranges = [{"type": "ECOSYSTEM", "events": list(events)}] if events else []
    return {"package": {"ecosystem": ecosystem, "name": name}, "ranges": ranges, **extra}


def debian(name: str, version: str, source: str = "") -> dict[str, str]:
    return {
        "type": "package",
        "name": name,
        "version": version,
        "source_name": source or name,
        "source_version": version,
    }


def findings(image_os: ImageOS, packages: list[dict], *records: dict) -> list[dict[str, Any]]:
    found = matching.targets(image_os, packages)
    return matching.match(found, [osv.parse_record(r) for r in records], NOW).findings


def summary(found: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    return {
        (f["cve"], f["packageName"], f["packageVersion"], f["severity"], f["status"]) for f in found
    }


def affected(version: str, *events: dict[str, str], scheme: str = "dpkg") -> tuple[bool, Any]:
    rng = osv.Range("ECOSYSTEM", tuple(osv.Event(*e.popitem()) for e in map(dict, events)))
    return matching.in_range(rng, version, scheme)


BOOKWORM = ImageOS("debian", "12")


# -- range semantics -----------------------------------------------------------------


def test_fixed_is_exclusive_and_last_affected_inclusive():
    # Given ranges ending exactly at the installed version
    # Then a fix at that version means not affected, a last_affected at it means affected
    assert affected("2.0-1", {"introduced": "0"}, {"fixed": "2.0-1"}) == (False, None)
    assert affected("1.9-1", {"introduced": "0"}, {"fixed": "2.0-1"}) == (True, "2.0-1")
    assert affected("2.0-1", {"introduced": "0"}, {"last_affected": "2.0-1"}) == (True, None)
    assert affected("2.0-2", {"introduced": "0"}, {"last_affected": "2.0-1"}) == (False, None)


def test_introduced_is_inclusive_and_events_are_sorted_before_the_walk():
    events = [{"fixed": "3.0"}, {"introduced": "2.0"}, {"fixed": "1.5"}, {"introduced": "1.0"}]
    assert affected("0.9", *events) == (False, None)
    assert affected("1.0", *events) == (True, "1.5")
    assert affected("1.7", *events) == (False, None)
    assert affected("2.0", *events) == (True, "3.0")
    assert affected("3.0", *events) == (False, None)


def test_epochs_and_tildes_order_as_dpkg_orders_them():
    # An epoch outranks everything after it: 1:2.3-4 is newer than a fix at 2.4-1
    assert affected("1:2.3-4", {"introduced": "0"}, {"fixed": "2.4-1"}) == (False, None)
    assert affected("1:2.3-4", {"introduced": "0"}, {"fixed": "1:2.3-5"}) == (True, "1:2.3-5")
    # "~" sorts before the release: a release candidate is older than the fix
    assert affected("1.0~rc1-1", {"introduced": "0"}, {"fixed": "1.0-1"}) == (True, "1.0-1")
    assert affected("1.0-1", {"introduced": "1.0~rc1-1"}, {"fixed": "1.0-2"}) == (True, "1.0-2")


def test_limit_bounds_the_range():
    # Given a range limited at 2.0.0: versions from there on are outside it
    assert affected("1.5.0", {"introduced": "1.0.0"}, {"limit": "2.0.0"}, scheme="semver")[0]
    assert not affected("2.0.0", {"introduced": "1.0.0"}, {"limit": "2.0.0"}, scheme="semver")[0]
    assert affected("9.0.0", {"introduced": "1.0.0"}, {"limit": "*"}, scheme="semver")[0]


def test_several_ranges_and_an_explicit_versions_list_are_alternatives():
    rec = record(
        "CVE-2026-0001",
        {
            "package": {"ecosystem": "PyPI", "name": "lib"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "1.0"}, {"fixed": "1.2"}]},
                {"type": "ECOSYSTEM", "events": [{"introduced": "2.0"}, {"fixed": "2.1"}]},
                {"type": "GIT", "repo": "https://example.org/lib", "events": [{"introduced": "0"}]},
            ],
            "versions": ["3.0"],
        },
    )

    def hit(version: str) -> set:
        return summary(findings(BOOKWORM, [pypi("lib", version)], rec))

    assert hit("1.1") and hit("2.0") and hit("3.0")
    assert not hit("1.2") and not hit("1.5") and not hit("2.1") and not hit("3.1")
    assert {s for _c, _p, _v, _sev, s in hit("3.0")} == {"open"}  # listed, no range: no fix


def pypi(name: str, version: str) -> dict[str, str]:
    return {"type": "python", "name": name, "version": version}


def test_a_version_the_comparator_cannot_read_skips_the_range_and_is_counted():
    # Given a record whose range holds a version PEP 440 cannot parse, and a good range
    rec = record(
        "GHSA-aaaa-bbbb-cccc",
        {
            "package": {"ecosystem": "PyPI", "name": "lib"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "not a version!"}]},
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.5"}]},
            ],
        },
    )
    found = matching.targets(BOOKWORM, [pypi("lib", "1.0")])

    # When it is matched
    result = matching.match(found, [osv.parse_record(rec)], NOW)

    # Then the unreadable range is skipped and counted; the other still matches
    assert result.unreadable_ranges == 1
    assert summary(result.findings) == {("GHSA-aaaa-bbbb-cccc", "lib", "1.0", "", "fixed in 1.5")}


# -- which ecosystem and which name ------------------------------------------------------


def test_os_packages_match_by_source_name_and_release():
    # Given a Debian 12 image with two binaries of source "foo"
    packages = [debian("libfoo1", "1:2.3-4", "foo"), debian("foo-utils", "1:2.3-4", "foo")]
    fixed = ({"introduced": "0"}, {"fixed": "1:2.3-5"})
    records = [
        record("CVE-2026-0010", pkg("Debian:12", "foo", *fixed)),
        record("CVE-2026-0011", pkg("Debian", "foo", *fixed)),  # every release
        record("CVE-2026-0012", pkg("Debian:11", "foo", *fixed)),  # another release
        record("CVE-2026-0013", pkg("Debian:12", "libfoo1", *fixed)),  # a binary name
    ]

    found = findings(BOOKWORM, packages, *records)

    # Then the source package is reported once per vulnerability, with its binaries
    assert summary(found) == {
        ("CVE-2026-0010", "foo", "1:2.3-4", "", "fixed in 1:2.3-5"),
        ("CVE-2026-0011", "foo", "1:2.3-4", "", "fixed in 1:2.3-5"),
    }
    assert {tuple(f["binaryPkgs"]) for f in found} == {("foo-utils", "libfoo1")}


def test_ecosystem_names_of_each_distribution():
    assert matching.os_ecosystems(ImageOS("alpine", "3.19.1")) == ("Alpine:v3.19",)
    assert matching.os_ecosystems(ImageOS("ubuntu", "22.04")) == (
        "Ubuntu:22.04",
        "Ubuntu:22.04:LTS",
    )
    assert matching.os_ecosystems(ImageOS("debian", "")) == ("Debian",)
    assert matching.os_ecosystems(ImageOS("rocky", "9.3")) == ("Rocky Linux:9", "Rocky Linux")
    assert matching.os_ecosystems(ImageOS("rhel", "9.3")) == ()  # keyed by product streams
    assert matching.os_ecosystems(ImageOS("", "")) == ()


def test_alpine_packages_match_by_origin_in_their_release_branch():
    packages = [
        {"type": "package", "name": "libcrypto3", "version": "3.1.4-r5", "source_name": "openssl"}
    ]
    fixed = ({"introduced": "0"}, {"fixed": "3.1.4-r6"})
    records = [
        record("CVE-2026-0020", pkg("Alpine:v3.19", "openssl", *fixed)),
        record("CVE-2026-0021", pkg("Alpine:v3.18", "openssl", *fixed)),
    ]
    found = findings(ImageOS("alpine", "3.19.1"), packages, *records)
    assert summary(found) == {("CVE-2026-0020", "openssl", "3.1.4-r5", "", "fixed in 3.1.4-r6")}
    assert found[0]["binaryPkgs"] == ["libcrypto3"]


def test_language_packages_match_in_their_ecosystems():
    packages = [
        pypi("Jinja2", "3.1.2"),
        {"type": "nodejs", "name": "lodash", "version": "4.17.20"},
        {"type": "go", "name": "golang.org/x/net", "version": "v0.17.0"},
        {"type": "jar", "name": "org.example:app", "version": "4.5.6"},
    ]
    records = [
        record("PYSEC-1", pkg("PyPI", "jinja2", {"introduced": "0"}, {"fixed": "3.1.3"})),
        record("GHSA-1", pkg("npm", "lodash", {"introduced": "0"}, {"fixed": "4.17.21"})),
        record("GO-1", pkg("Go", "golang.org/x/net", {"introduced": "0"}, {"fixed": "0.17.1"})),
        record("GHSA-2", pkg("Maven", "org.example:app", {"introduced": "4.0"}, {"fixed": "4.6"})),
        record("GHSA-3", pkg("npm", "jinja2", {"introduced": "0"})),  # another ecosystem
    ]
    found = findings(ImageOS("", ""), packages, *records)
    assert {(f["cve"], f["packageName"], f["packageVersion"], f["status"]) for f in found} == {
        ("PYSEC-1", "Jinja2", "3.1.2", "fixed in 3.1.3"),
        ("GHSA-1", "lodash", "4.17.20", "fixed in 4.17.21"),
        ("GO-1", "golang.org/x/net", "v0.17.0", "fixed in 0.17.1"),
        ("GHSA-2", "org.example:app", "4.5.6", "fixed in 4.6"),
    }


# -- one finding per vulnerability --------------------------------------------------------


def test_a_debian_advisory_aliasing_a_cve_record_is_one_finding():
    fixed = ({"introduced": "0"}, {"fixed": "1:2.3-5"})
    records = [
        record(
            "CVE-2026-0030",
            pkg("Debian:12", "foo", *fixed),
            severity=[{"type": "CVSS_V3", "score": CRITICAL_V3}],
            published="2026-01-01T00:00:00Z",
        ),
        record(
            "DSA-6000-1",
            pkg("Debian:12", "foo", *fixed),
            aliases=["CVE-2026-0030"],
            published="2026-01-10T00:00:00Z",
        ),
    ]
    [f] = findings(BOOKWORM, [debian("foo", "1:2.3-4")], *records)
    assert (f["cve"], f["severity"], f["cvss"], f["status"]) == (
        "CVE-2026-0030",
        "critical",
        9.8,
        "fixed in 1:2.3-5",
    )
    assert f["sources"] == ["CVE-2026-0030", "DSA-6000-1"]
    # The fix came with the advisory: its publication dates it
    assert f["fixDate"] == int(datetime(2026, 1, 10, tzinfo=UTC).timestamp())
    assert f["published"] == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_advisories_without_a_cve_merge_by_alias_and_one_naming_two_cves_gives_two():
    ghsa = record("GHSA-x", pkg("PyPI", "lib", {"introduced": "0"}), aliases=["PYSEC-9"])
    pysec = record("PYSEC-9", pkg("PyPI", "lib", {"introduced": "0"}), aliases=["GHSA-x"])
    two = record(
        "DSA-6001-1",
        pkg("Debian:12", "foo", {"introduced": "0"}),
        aliases=["CVE-2026-0041", "CVE-2026-0042"],
    )
    assert [f["cve"] for f in findings(BOOKWORM, [pypi("lib", "1.0")], ghsa, pysec)] == ["GHSA-x"]
    found = findings(BOOKWORM, [debian("foo", "1.0-1")], two)
    assert sorted(f["cve"] for f in found) == ["CVE-2026-0041", "CVE-2026-0042"]


def test_withdrawn_records_never_match():
    rec = record(
        "CVE-2026-0050",
        pkg("Debian:12", "foo", {"introduced": "0"}),
        withdrawn="2026-02-01T00:00:00Z",
    )
    assert findings(BOOKWORM, [debian("foo", "1.0-1")], rec) == []


# -- severity, status and the rest of the finding ------------------------------------------


def test_severity_from_cvss_vectors_then_the_ecosystems_own_rating():
    base = [debian("a", "1.0-1"), debian("b", "1.0-1"), debian("c", "1.0-1"), debian("d", "1")]
    open_range = {"introduced": "0"}
    records = [
        record("CVE-1", pkg("Debian:12", "a", open_range), severity=[_v("CVSS_V4", HIGH_V4)]),
        record("CVE-2", pkg("Debian:12", "b", open_range), severity=[_v("CVSS_V3", MEDIUM_V3)]),
        record("CVE-3", pkg("Debian:12", "c", open_range, database_specific={"urgency": "low"})),
        record(
            "GHSA-4", pkg("Debian:12", "d", open_range), database_specific={"severity": "MODERATE"}
        ),
    ]
    found = {f["cve"]: f for f in findings(BOOKWORM, base, *records)}
    assert (found["CVE-1"]["severity"], found["CVE-1"]["cvss"]) == ("high", 8.7)
    assert found["CVE-1"]["vecStr"] == HIGH_V4
    assert (found["CVE-2"]["severity"], found["CVE-2"]["cvss"]) == ("medium", 5.3)
    assert (found["CVE-3"]["severity"], found["CVE-3"]["cvss"]) == ("low", None)
    assert found["GHSA-4"]["severity"] == "medium"


def _v(kind: str, score: str) -> dict[str, str]:
    return {"type": kind, "score": score}


def test_status_link_and_risk_factors():
    recent = (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = [
        record(
            "CVE-2026-0060",
            pkg("Debian:12", "a", {"introduced": "0"}, {"fixed": "2.0-1"}),
            severity=[_v("CVSS_V3", CRITICAL_V3)],
            published=recent,
            references=[_ref("WEB", "https://example.org/w"), _ref("ADVISORY", "https://a/1")],
        ),
        record(
            "CVE-2026-0061",
            pkg("Debian:12", "b", {"introduced": "0"}, ecosystem_specific={"status": "wontfix"}),
            published="2020-01-01T00:00:00Z",
        ),
        record("CVE-2026-0062", pkg("Debian:12", "c", {"introduced": "0"})),
    ]
    packages = [debian("a", "1.0-1"), debian("b", "1.0-1"), debian("c", "1.0-1")]
    found = {f["cve"]: f for f in findings(BOOKWORM, packages, *records)}
    fixed, wont, unfixed = found["CVE-2026-0060"], found["CVE-2026-0061"], found["CVE-2026-0062"]
    assert (fixed["status"], wont["status"], unfixed["status"]) == (
        "fixed in 2.0-1",
        "will not fix",
        "open",
    )
    assert fixed["link"] == "https://a/1"
    assert unfixed["link"] == "https://osv.dev/vulnerability/CVE-2026-0062"
    assert set(fixed["riskFactors"]) == {
        "Has fix",
        "Critical severity",
        "Recent vulnerability",
        "Attack vector: network",
        "Attack complexity: low",
    }
    assert wont["riskFactors"] == {}


def _ref(kind: str, url: str) -> dict[str, str]:
    return {"type": kind, "url": url}


def test_targets_group_binaries_by_source_and_skip_os_packages_of_an_unknown_os():
    packages = [debian("libfoo1", "1.0-1", "foo"), debian("foo", "1.0-1")]
    assert matching.targets(BOOKWORM, packages) == [
        Target(
            ("Debian:12", "Debian"), "foo", "1.0-1", "package", "foo", "1.0-1", ("foo", "libfoo1")
        )
    ]
    assert matching.targets(ImageOS("", ""), packages) == []


def test_images_sharing_a_memo_get_the_findings_each_gets_alone():
    records = [
        osv.parse_record(r)
        for r in (
            record("CVE-2026-0201", pkg("Debian:12", "foo", {"introduced": "0"}, {"fixed": "2"})),
            record("CVE-2026-0202", pkg("Debian", "bar", {"introduced": "0"})),
            record("CVE-2026-0203", pkg("PyPI", "lib", {"introduced": "0"}, {"fixed": "1.0"})),
        )
    ]
    images = [
        [debian("foo", "1"), debian("bar", "5")],
        [debian("foo", "3"), debian("libbar", "5", "bar")],  # same source, other binaries
        [debian("foo", "1"), {"type": "python", "name": "Lib", "version": "0.9"}],
    ]
    memo: dict[Target, matching.TargetMatch] = {}
    shared = [matching.match(matching.targets(BOOKWORM, p), records, NOW, memo) for p in images]
    alone = [matching.match(matching.targets(BOOKWORM, p), records, NOW) for p in images]
    assert [r.findings for r in shared] == [r.findings for r in alone]
    assert [summary(r.findings) for r in shared] == [
        {
            ("CVE-2026-0201", "foo", "1", "", "fixed in 2"),
            ("CVE-2026-0202", "bar", "5", "", "open"),
        },
        {("CVE-2026-0202", "bar", "5", "", "open")},
        {
            ("CVE-2026-0201", "foo", "1", "", "fixed in 2"),
            ("CVE-2026-0203", "Lib", "0.9", "", "fixed in 1.0"),
        },
    ]
    assert shared[1].findings[0]["binaryPkgs"] == ["libbar"]


def test_a_rematch_batch_of_an_older_generation_never_shares_the_newer_memo():
    from worker.rematch import memo_for

    newer = memo_for(10**9)
    assert memo_for(10**9) is newer
    older = memo_for(10**9 - 1)
    assert older is not newer and older.generation == 10**9 - 1
    assert memo_for(10**9) is newer  # the older batch did not replace it


# -- reading records ------------------------------------------------------------------------


GOOD = record("CVE-2026-0100", pkg("PyPI", "lib", {"introduced": "0"}, {"fixed": "1.0"}))
BAD = {
    "no-id.json": {"modified": "2026-01-01T00:00:00Z"},
    "bad-time.json": {"id": "X-1", "modified": "yesterday"},
    "two-keys.json": record("X-2", pkg("PyPI", "a", {"introduced": "0", "fixed": "1"})),
    "no-introduced.json": record("X-3", pkg("PyPI", "a", {"fixed": "1"})),
    "no-ecosystem.json": record("X-4", {"package": {"name": "a"}, "ranges": []}),
    "bad-type.json": record("X-5", {"package": {"ecosystem": "PyPI", "name": "a"}, "ranges": [
        {"type": "DATE", "events": [{"introduced": "0"}]}]}),
}  # fmt: skip


def test_a_folder_of_records_reports_each_invalid_one_and_reads_the_rest(tmp_path: Path):
    # Given a folder with one good record, six invalid ones and a file that is not JSON
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "good.json").write_text(json.dumps(GOOD))
    for file, data in BAD.items():
        (tmp_path / file).write_text(json.dumps(data))
    (tmp_path / "broken.json").write_text("{not json")

    # When it is read
    items = list(osv.read_records(tmp_path))

    # Then the good record comes through and every other one says what is wrong
    good = [i for i in items if isinstance(i, osv.Record)]
    reasons = {Path(i.where).name: i.reason for i in items if isinstance(i, osv.Invalid)}
    assert [r.id for r in good] == ["CVE-2026-0100"]
    assert "'id' must be a non-empty string" in reasons["no-id.json"]
    assert "'modified' is not an RFC 3339 timestamp" in reasons["bad-time.json"]
    assert "exactly one of" in reasons["two-keys.json"]
    assert "no 'introduced' event" in reasons["no-introduced.json"]
    assert "non-empty 'ecosystem' and 'name'" in reasons["no-ecosystem.json"]
    assert "type must be one of ECOSYSTEM, SEMVER, GIT" in reasons["bad-type.json"]
    assert reasons["broken.json"].startswith("not JSON")


def test_a_zip_export_and_a_json_array_are_read_alike(tmp_path: Path):
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("CVE-2026-0100.json", json.dumps(GOOD))
        z.writestr("X-3.json", json.dumps(BAD["no-introduced.json"]))
    listing = tmp_path / "all.json"
    listing.write_text(json.dumps([GOOD, BAD["no-introduced.json"]]))
    for path in (archive, listing):
        items = list(osv.read_records(path))
        assert [type(i).__name__ for i in items] == ["Record", "Invalid"]


def test_a_missing_path_or_unreachable_url_is_a_clear_error(tmp_path: Path):
    with pytest.raises(osv.SourceUnavailable, match="does not exist"):
        osv.fetch(str(tmp_path / "nothing-here.json"))
    with pytest.raises(osv.SourceUnavailable, match="cannot be reached"):
        osv.fetch("http://127.0.0.1:9/all.zip", timeout=2)


@pytest.fixture
def served() -> Iterator[OsvExportServer]:
    server = OsvExportServer([GOOD])
    yield server
    server.close()


def test_a_url_is_downloaded_once_and_then_only_asked_whether_it_changed(
    served: OsvExportServer,
):
    # When a URL is fetched, then fetched again with the ETag it answered
    with osv.fetch(served.url) as first:
        assert first.path is not None and first.etag == '"v1"'
        assert [r.id for r in osv.read_records(first.path)] == ["CVE-2026-0100"]
    with osv.fetch(served.url, etag=first.etag) as second:
        # Then the second fetch downloads nothing
        assert second.path is None
    assert served.answers == [200, 304]
    assert not first.path.exists()  # the temporary download is gone
