"""Read queries behind the list pages; each is served by an index (see models/jobs.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from models.images import Image, Tag
from models.jobs import REGULAR_KINDS, ImageScan, ItemStatus, JobKind, ScanJob, ScanResult
from models.vulns import Finding, ImagePackage

RESULT_SORTS = {
    "scanTime": ScanResult.scanned_at,
    "registry": ScanResult.registry_host,
    "repository": ScanResult.repository,
    "repo": ScanResult.repository,
    "tag": ScanResult.tag,
    "id": ScanResult.digest,
}


@dataclass(frozen=True)
class ResultFilter:
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    image_id: str | None = None
    cve: str | None = None  # images with a finding of this vulnerability
    package: str | None = None  # images holding this package (by name or source name)
    package_version: str | None = None


def latest_results(
    session: Session,
    flt: ResultFilter,
    *,
    offset: int,
    limit: int,
    sort: str | None,
    reverse: bool,
) -> tuple[Sequence[tuple[ScanResult, Image | None]], int]:
    """The current result of each tagged image, one page of it, and the total count."""
    base = _filtered(select(ScanResult).where(ScanResult.is_latest.is_(True)), flt)
    total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
    keys = [RESULT_SORTS[sort]] if sort else []
    keys += [ScanResult.registry_host, ScanResult.repository, ScanResult.tag, ScanResult.platform]
    order = [k.desc() if reverse else k.asc() for k in keys]
    stmt = (
        _filtered(
            select(ScanResult, Image)
            .outerjoin(Image, ScanResult.image_id == Image.id)
            .where(ScanResult.is_latest.is_(True)),
            flt,
        )
        .order_by(*order)
        .offset(offset)
        .limit(limit)
    )
    return session.execute(stmt).all(), total


def _filtered(stmt: Select, flt: ResultFilter) -> Select:
    if flt.registry is not None:
        stmt = stmt.where(ScanResult.registry_host == flt.registry)
    if flt.repository is not None:
        stmt = stmt.where(ScanResult.repository == flt.repository)
    if flt.tag is not None:
        stmt = stmt.where(ScanResult.tag == flt.tag)
    if flt.cve is not None:
        affected = select(Finding.image_id).where(Finding.vuln_id == flt.cve.upper())
        stmt = stmt.where(ScanResult.image_id.in_(affected))
    if flt.package is not None:
        stmt = stmt.where(
            ScanResult.image_id.in_(_images_holding(flt.package, flt.package_version))
        )
    if flt.image_id is not None:
        config_digest = select(Image.id).where(Image.config_digest == flt.image_id)
        stmt = stmt.where(
            or_(ScanResult.digest == flt.image_id, ScanResult.image_id.in_(config_digest))
        )
    return stmt


def _images_holding(name: str, version: str | None) -> Select:
    stmt = select(ImagePackage.image_id).where(
        or_(ImagePackage.name == name, ImagePackage.source_name == name)
    )
    return stmt.where(ImagePackage.version == version) if version is not None else stmt


def findings_of(session: Session, image_ids: Sequence[int]) -> dict[int, list[Finding]]:
    """The findings of each image, most severe first."""
    out: dict[int, list[Finding]] = defaultdict(list)
    if not image_ids:
        return out
    stmt = (
        select(Finding)
        .where(Finding.image_id.in_(set(image_ids)))
        .order_by(Finding.image_id, Finding.cvss.desc().nulls_last(), Finding.vuln_id)
    )
    for finding in session.scalars(stmt):
        out[finding.image_id].append(finding)
    return out


def tags_of(session: Session, images: Sequence[Image]) -> dict[int, list[Tag]]:
    """For each image, the tags now pointing at it or at the index it belongs to."""
    if not images:
        return {}
    digests = {d for i in images for d in (i.digest, i.index_digest) if d}
    repos = {(i.registry_host, i.repository) for i in images}
    stmt = select(Tag).where(
        Tag.digest.in_(digests), Tag.repository.in_({repo for _h, repo in repos})
    )
    by_key: dict[tuple[str, str, str], list[Tag]] = defaultdict(list)
    for tag in session.scalars(stmt.order_by(Tag.name)):
        by_key[(tag.registry_host, tag.repository, tag.digest)].append(tag)
    out: dict[int, list[Tag]] = {}
    for image in images:
        found = by_key[(image.registry_host, image.repository, image.digest)]
        if image.index_digest:
            found = found + by_key[(image.registry_host, image.repository, image.index_digest)]
        out[image.id] = found
    return out


def jobs_page(
    session: Session, *, kind: JobKind | None, offset: int, limit: int
) -> tuple[Sequence[ScanJob], int]:
    stmt = select(ScanJob)
    if kind is not None:
        stmt = stmt.where(ScanJob.kind == kind)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = session.scalars(stmt.order_by(ScanJob.id.desc()).offset(offset).limit(limit)).all()
    return page, total


def failed_items(session: Session, job_id: int, limit: int = 1000) -> Sequence[ImageScan]:
    stmt = (
        select(ImageScan)
        .where(ImageScan.job_id == job_id, ImageScan.status == ItemStatus.FAILED)
        .order_by(ImageScan.id)
        .limit(limit)
    )
    return session.scalars(stmt).all()


def latest_regular_job(session: Session) -> ScanJob | None:
    """The regular scan running now, else the one that ran last."""
    regular = ScanJob.kind.in_(REGULAR_KINDS)
    stmt = select(ScanJob).where(regular, ScanJob.published_at.is_not(None))
    return session.scalar(stmt.order_by(ScanJob.id.desc()).limit(1))


def on_demand_jobs_for(
    session: Session, registry: str | None, repo: str, tag: str, digest: str, limit: int = 20
) -> Sequence[ScanJob]:
    """Recent on-demand jobs of one image, newest first."""
    stmt = (
        select(ScanJob)
        .join(ImageScan, ImageScan.job_id == ScanJob.id)
        .where(ScanJob.kind == JobKind.ON_DEMAND, ImageScan.repository == repo)
    )
    if registry:
        stmt = stmt.where(ImageScan.registry_host == registry)
    if tag:
        stmt = stmt.where(ImageScan.tag == tag)
    if digest:
        stmt = stmt.where(ImageScan.digest == digest)
    return session.scalars(stmt.order_by(ScanJob.id.desc()).limit(limit)).all()


@dataclass(frozen=True)
class HeldPackage:
    """A package some current image holds, with where that image is tagged."""

    registry_host: str
    repository: str
    tag: str
    os_distro: str
    type: str
    version: str


def holders_of(session: Session, name: str) -> list[HeldPackage]:
    """Every tagged image whose latest result holds ``name`` (binary or source name)."""
    stmt = (
        select(ScanResult, Image.os_distro, ImagePackage.type, ImagePackage.version)
        .join(Image, ScanResult.image_id == Image.id)
        .join(ImagePackage, ImagePackage.image_id == Image.id)
        .where(ScanResult.is_latest.is_(True), ScanResult.tag != "")
        .where(or_(ImagePackage.name == name, ImagePackage.source_name == name))
    )
    return [
        HeldPackage(r.registry_host, r.repository, r.tag, distro, kind, version)
        for r, distro, kind, version in session.execute(stmt)
    ]


def affected_by(session: Session, vuln_id: str) -> list[tuple[str, str, str]]:
    """(registry host, repository, tag) of every current image with this finding."""
    stmt = (
        select(ScanResult.registry_host, ScanResult.repository, ScanResult.tag)
        .join(Finding, Finding.image_id == ScanResult.image_id)
        .where(ScanResult.is_latest.is_(True), ScanResult.tag != "")
        .where(Finding.vuln_id == vuln_id.upper())
        .distinct()
    )
    return [(h, r, t) for h, r, t in session.execute(stmt)]
