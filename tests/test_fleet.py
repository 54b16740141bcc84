"""The fleet views the dashboard and /metrics read (``models/fleet.py``), on both
backends, from rows written here: findings by severity and by day, the most widespread
vulnerabilities, the most vulnerable images, the on-demand backlog; and the chart the
dashboard draws from them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from api.dashboard.charts import stacked_bars
from core.requester import Requester
from models import Image, JobKind, JobStatus, ScanResult, findings, fleet, jobs, package_versions
from models.db import make_engine, make_sessionmaker, transaction
from models.package_versions import PackageRef

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sessions(own_database: str) -> Iterator:
    engine = make_engine(own_database)
    yield make_sessionmaker(engine)
    engine.dispose()


def image(session: Session, repo: str, digest: str, severities: list[str]) -> int:
    """An image holding a package version of its own per finding, with that severity."""
    row = Image(registry_host="r:5000", repository=repo, digest=digest, analyser_version=1)
    session.add(row)
    session.flush()
    holding: dict[int, tuple[tuple[str, ...], package_versions.Counts]] = {}
    for n, severity in enumerate(severities):
        cve, name = f"CVE-2026-{n % 2:04d}", f"{repo}-{digest}-p{n}"
        ref = PackageRef(("Debian:12",), name, "1", "package", name, "1")
        [known] = package_versions.ensure_package_versions(session, [ref]).values()
        detail = {"cve": cve, "severity": severity, "cvss": None, "packageType": "package",
                  "packageName": name, "packageVersion": "1"}  # fmt: skip
        package_versions.store_matches(session, {known.id: [detail]}, generation=0)
        holding[known.id] = ((), package_versions.Counts.of([detail]))
    findings.link_images(session, [(row, holding, 0)])
    return row.id


def result(session: Session, job_id: int, repo: str, image_id: int | None, at: datetime,
           latest: bool) -> None:  # fmt: skip
    session.add(
        ScanResult(
            job_id=job_id,
            registry_host="r:5000",
            repository=repo,
            tag="1",
            image_id=image_id,
            scanned_at=at,
            is_latest=latest,
            err="" if image_id else "manifest not found (404)",
        )
    )


@pytest.fixture(scope="module")
def fleet_rows(sessions) -> dict[str, int]:
    """Two tagged images: `web` was replaced two days ago by a build with fewer findings;
    `db` has one image all along. A third tag failed its last scan."""
    with transaction(sessions) as session:
        job = jobs.create_job(session, JobKind.REGULAR_ALL, Requester("admin", "admin"))
        old_web = image(session, "web", "sha256:old", ["critical", "high", "high"])
        new_web = image(session, "web", "sha256:new", ["low"])
        db = image(session, "db", "sha256:db", ["high", "medium", ""])
        result(session, job.id, "web", old_web, NOW - timedelta(days=20), latest=False)
        result(session, job.id, "web", new_web, NOW - timedelta(days=2), latest=True)
        result(session, job.id, "db", db, NOW - timedelta(days=10), latest=True)
        result(session, job.id, "gone", None, NOW - timedelta(hours=1), latest=True)
        for team, status in (("blue", JobStatus.QUEUED), ("blue", JobStatus.RUNNING),
                             ("red", JobStatus.QUEUED)):  # fmt: skip
            waiting = jobs.create_job(session, JobKind.ON_DEMAND, Requester("t", team))
            waiting.status = status
        return {"old_web": old_web, "new_web": new_web, "db": db}


def test_findings_of_the_current_images(sessions, fleet_rows: dict[str, int]):
    with sessions() as session:
        # Only the current images count: the old web build is gone from the totals
        assert fleet.severity_totals(session) == {
            "critical": 0, "high": 1, "medium": 1, "low": 1, "unknown": 1,
        }  # fmt: skip
        widespread = fleet.widespread(session)
        assert [(w.vuln_id, w.images) for w in widespread] == [
            ("CVE-2026-0000", 2), ("CVE-2026-0001", 1),
        ]  # fmt: skip
        assert widespread[0].severity == "high"  # the highest of its findings
        worst = fleet.most_vulnerable(session)
        assert [image_id for image_id, _ in worst] == [fleet_rows["db"], fleet_rows["new_web"]]
        assert worst[0][1] == Counter({"high": 1, "medium": 1, "unknown": 1})
        assert [r.repository for r in fleet.failing_images(session)] == ["gone"]


def test_findings_by_day_follow_the_images_each_tag_pointed_at(sessions, fleet_rows):
    with sessions() as session:
        days = fleet.findings_by_day(session, 30, NOW)
    assert len(days) == 30 and days[-1][0] == date(2026, 3, 10)
    by_day = dict(days)
    # Before db was scanned, web's old build alone
    assert by_day[date(2026, 2, 25)] == Counter({"critical": 1, "high": 2})
    # Then both, until web's new build replaced the old one two days ago
    assert by_day[date(2026, 3, 7)] == Counter(
        {"critical": 1, "high": 3, "medium": 1, "unknown": 1}
    )
    assert by_day[date(2026, 3, 8)] == Counter({"high": 1, "medium": 1, "low": 1, "unknown": 1})
    # And the day before anything was scanned counts nothing
    assert by_day[date(2026, 2, 9)] == Counter()


def test_the_on_demand_backlog_per_team(sessions, fleet_rows):
    with sessions() as session:
        backlog = fleet.ondemand_backlog(session)
    assert [(b.team, b.queued, b.running) for b in backlog] == [("blue", 1, 1), ("red", 1, 0)]
    assert all(b.oldest_queued is not None and b.oldest_queued.tzinfo for b in backlog)
    with sessions() as session:
        counts = {(k, s): n for k, s, n in fleet.job_counts(session)}
    assert counts[("on-demand", "queued")] == 2 and counts[("regular-all", "queued")] == 1


def test_the_chart_stacks_severities_and_scales_to_the_highest_day():
    series = [
        (date(2026, 3, 1) + timedelta(days=n), Counter({"high": n, "low": 1})) for n in range(15)
    ]
    chart = stacked_bars(series, width=300, height=100)
    assert chart.highest == 15
    last_day = [b for b in chart.bars if b.title.startswith("2026-03-15")]
    assert [b.severity for b in last_day] == ["low", "high"]  # the most severe on top
    assert sum(b.height for b in last_day) == pytest.approx(100)
    assert last_day[1].y == pytest.approx(0)
    assert [label for _x, label in chart.labels] == ["Mar 01", "Mar 08", "Mar 15"]
    assert stacked_bars([], width=300).bars == []
