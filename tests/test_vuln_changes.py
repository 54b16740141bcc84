"""What a data change re-matches, on a private database of each backend: only the
package versions it names, so other package versions' findings are kept as they are and
are only marked current, whatever number of images hold them; changes of an import cut
off before its end are not lost, and the change log is pruned once every image is past
it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from models import Image, ImageTarget, PackageFinding, PackageVersion, VulnChange
from models import vuln_records as store
from models.db import make_engine, make_sessionmaker, transaction
from models.findings import current_at, findings_of
from models.package_versions import Counts
from regscan.db import upgrade
from scanner.vulns import osv
from tests.conftest import _postgres_database, _sqlite_url
from tests.test_vulns import hit, osv_record
from worker.housekeeping import prune
from worker.rematch import RematchCounts, current_findings, rematch_batch
from worker.vuln_import import import_location, record_row

FIX = ({"introduced": "0"}, {"fixed": "1.0-2"})


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    urls = _sqlite_url(tmp_path) if request.param == "sqlite" else _postgres_database()
    for url in urls:
        upgrade(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
        engine.dispose()


def record(rid: str, package: str, *events: dict[str, str], modified: str) -> dict[str, Any]:
    """A Debian 12 record about ``package``; fixed in 1.0-2 unless ``events`` say else."""
    return osv_record(rid, hit("Debian:12", package, *(events or FIX)), modified=modified)


def import_records(sessions: sessionmaker[Session], folder: Path, *records: dict) -> int:
    folder.mkdir()
    for n, rec in enumerate(records):
        (folder / f"{n}.json").write_text(json.dumps(rec))
    report = import_location(sessions, str(folder), conditional=False)
    assert report.generation is not None
    return report.generation


def store_image(sessions: sessionmaker[Session], digest: str, *packages: str) -> int:
    """An image as a scan stores it: Debian 12, each package at 1.0-1."""
    inventory = [
        {"type": "package", "name": p, "version": "1.0-1", "source_name": p,
         "source_version": "1.0-1"}
        for p in packages
    ]  # fmt: skip
    with transaction(sessions) as session:
        return session.execute(
            insert(Image).returning(Image.id),
            {
                "registry_host": "r.test",
                "repository": "app",
                "digest": digest,
                "os_distro": "debian",
                "os_distro_version": "12",
                "packages": inventory,
                "analyser_version": 1,
            },
        ).scalar_one()


def state(sessions: sessionmaker[Session], image_id: int) -> tuple[dict[str, int], int | None]:
    """The image's findings (CVE id -> row id), and the generation matched against."""
    with sessions() as session:
        rows = session.execute(
            select(PackageFinding.vuln_id, PackageFinding.id)
            .join(ImageTarget, ImageTarget.package_version_id == PackageFinding.package_version_id)
            .where(ImageTarget.image_id == image_id)
        ).all()
        image = session.get_one(Image, image_id)
        generation = current_at(image, store.findings_generation(session))
    return dict(rows), generation


def rematch_all(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """Images linked (matched for the first time), and package versions matched again."""
    counts = rematch_batch(sessions, 1000)
    assert not counts.more
    return counts.linked, counts.versions_matched


def test_only_the_packages_a_change_names_are_matched_again(
    sessions: sessionmaker[Session], tmp_path: Path
):
    # Given an image holding foo and keep, another holding bar, each package with a finding
    one = store_image(sessions, "sha256:01", "foo", "keep")
    two = store_image(sessions, "sha256:02", "bar")
    first = "2026-01-01T00:00:00Z"
    import_records(
        sessions,
        tmp_path / "a",
        record("CVE-2099-0001", "foo", modified=first),
        record("CVE-2099-0002", "bar", modified=first),
        record("CVE-2099-0009", "keep", modified=first),
    )
    assert rematch_all(sessions) == (2, 0)  # never matched: both linked
    one_rows, _ = state(sessions, one)
    two_rows, _ = state(sessions, two)
    assert set(one_rows) == {"CVE-2099-0001", "CVE-2099-0009"}

    # When a record about foo is re-issued (foo no longer affected) and one about a
    # package no image holds is added
    later = "2026-02-01T00:00:00Z"
    generation = import_records(
        sessions,
        tmp_path / "b",
        record("CVE-2099-0001", "foo", {"introduced": "0"}, {"fixed": "1.0-1"}, modified=later),
        record("CVE-2099-0003", "absent", modified=later),
    )

    # Then only foo is matched again: its finding goes, keep's row stays as it was
    assert rematch_all(sessions) == (0, 1)
    assert state(sessions, one) == ({"CVE-2099-0009": one_rows["CVE-2099-0009"]}, generation)
    # And the image holding bar keeps its finding rows as they were, now current
    assert state(sessions, two) == (two_rows, generation)

    # When a record stops naming bar
    generation = import_records(
        sessions, tmp_path / "c", record("CVE-2099-0002", "baz", modified=later)
    )

    # Then bar is matched again too: what a record named before counts
    assert rematch_all(sessions) == (0, 1)
    assert state(sessions, two) == ({}, generation)


def test_the_changes_of_an_import_cut_off_midway_go_with_the_next_generation(
    sessions: sessionmaker[Session], tmp_path: Path
):
    # Given an image matched against the data
    image = store_image(sessions, "sha256:03", "foo")
    first = "2026-01-01T00:00:00Z"
    import_records(sessions, tmp_path / "a", record("CVE-2099-0004", "other", modified=first))
    rematch_all(sessions)

    # When an import stores a record about foo and stops before its end (no new generation)
    new = osv.parse_record(record("CVE-2099-0005", "foo", modified=first))
    with transaction(sessions) as session:
        store.store_records(session, [record_row(new)], None)
    # And a later import changes something unrelated
    generation = import_records(
        sessions, tmp_path / "b", record("CVE-2099-0006", "other", modified=first)
    )

    # Then foo is matched again, and the image shows the cut-off import's finding
    assert rematch_all(sessions) == (0, 1)
    findings, matched_at = state(sessions, image)
    assert (list(findings), matched_at) == (["CVE-2099-0005"], generation)


def test_changes_every_image_is_past_are_forgotten(sessions: sessionmaker[Session], tmp_path: Path):
    def logged() -> int:
        with sessions() as session:
            return session.scalar(select(func.count(VulnChange.id))) or 0

    # Given two imports, and an image matched only against the first
    image = store_image(sessions, "sha256:04", "foo")
    first = "2026-01-01T00:00:00Z"
    import_records(sessions, tmp_path / "a", record("CVE-2099-0007", "foo", modified=first))
    rematch_all(sessions)
    import_records(sessions, tmp_path / "b", record("CVE-2099-0008", "bar", modified=first))
    assert logged() == 2

    # When housekeeping runs, the second import's change is kept: the image needs it
    assert prune(sessions).vuln_changes == 1
    assert logged() == 1

    # And once the image is past it, that change is forgotten as well
    assert rematch_all(sessions) == (0, 0)
    assert list(state(sessions, image)[0]) == ["CVE-2099-0007"]
    assert prune(sessions).vuln_changes == 1
    assert logged() == 0


@pytest.mark.slow  # stores 2,000 images: about 20 s per backend
def test_a_change_to_a_package_thousands_of_images_hold_matches_one_package_version_again(
    sessions: sessionmaker[Session], tmp_path: Path
):
    # Given 2,000 images that all hold `common` 1.0-1, each also a package of its own,
    # matched against a record about common and records about some of their own packages
    n = 2000

    def package(name: str) -> dict[str, str]:
        return {"type": "package", "name": name, "version": "1.0-1", "source_name": name,
                "source_version": "1.0-1"}  # fmt: skip

    with transaction(sessions) as session:
        session.execute(
            insert(Image),
            [
                {
                    "registry_host": "r.test",
                    "repository": f"app{i}",
                    "digest": f"sha256:{i:04x}",
                    "os_distro": "debian",
                    "os_distro_version": "12",
                    "analyser_version": 1,
                    "packages": [package("common"), package(f"own{i}")],
                }
                for i in range(n)
            ],
        )
    first = "2026-01-01T00:00:00Z"
    own = [record(f"CVE-2099-{1000 + i}", f"own{i}", modified=first) for i in range(0, n, 7)]
    import_records(
        sessions, tmp_path / "a", record("CVE-2099-0100", "common", modified=first), *own
    )
    assert drain(sessions).linked == n

    # When a new record about common arrives
    import_records(sessions, tmp_path / "b", record("CVE-2099-0101", "common", modified=first))
    counts = drain(sessions)

    # Then common's one package version is matched again, not the 2,000 images, and the
    # counts of every image holding it follow
    assert (counts.linked, counts.versions_matched, counts.images_changed) == (0, 1, n)
    with sessions() as session:
        about_common = session.scalar(
            select(func.count(PackageFinding.id))
            .join(PackageVersion, PackageVersion.id == PackageFinding.package_version_id)
            .where(PackageVersion.name == "common")
        )
        assert about_common == 2  # stored once, whatever number of images hold it
        # And what every sampled image shows is what a fresh full match gives
        for image in session.scalars(select(Image).where(Image.id % 97 == 0)):
            fresh = current_findings(session, image)
            shown = [f.detail for f in findings_of(session, [image.id])[image.id]]
            assert sorted(map(comparable, shown)) == sorted(map(comparable, fresh))
            counted = (image.vulns_critical, image.vulns_high, image.vulns_medium,
                       image.vulns_low, image.vulns_total)  # fmt: skip
            assert counted == Counts.of(fresh).values()


def drain(sessions: sessionmaker[Session]) -> RematchCounts:
    """Re-match batches of 500 until none is left, as the task chain does; the sums."""
    total = RematchCounts()
    while True:
        counts = rematch_batch(sessions, 500)
        total.linked += counts.linked
        total.versions_matched += counts.versions_matched
        total.images_changed += counts.images_changed
        if not counts.more:
            return total


def comparable(finding: dict[str, Any]) -> str:
    """A finding without its risk factors, which depend on the time it was made."""
    return json.dumps({k: v for k, v in finding.items() if k != "riskFactors"}, sort_keys=True)
