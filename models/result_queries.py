"""The current results, as ``GET /registry``, the exports and campaigns read them:
the latest result of each tagged image, filtered and paged, and which images hold a
package or have a vulnerability. Read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from models.findings import images_affected_by
from models.images import Image, ImagePackage, images_holding
from models.results import ScanResult

_Selected = TypeVar("_Selected", bound="Select[*tuple[Any, ...]]")

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
    search: str | None = None  # a substring of the registry, repository or tag (any case)


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


def images_of_job(session: Session, job_id: int) -> list[tuple[ScanResult, Image]]:
    """What a job's scans stored: each result with its image (platform images of an
    index each have one), in platform order; failed images have no image and are left
    out."""
    stmt = (
        select(ScanResult, Image)
        .join(Image, ScanResult.image_id == Image.id)
        .where(ScanResult.job_id == job_id)
        .order_by(ScanResult.platform, ScanResult.id)
    )
    return [(r, i) for r, i in session.execute(stmt)]


def latest_names(
    session: Session, flt: ResultFilter, *, offset: int, limit: int | None
) -> list[str]:
    """``REGISTRY/REPO:TAG`` of each image with a current result, once whatever its
    platforms, in name order; an untagged one is named by a digest (``REPO@DIGEST``)."""
    columns = (ScanResult.registry_host, ScanResult.repository, ScanResult.tag)
    stmt = (
        _filtered(
            select(*columns, func.min(ScanResult.digest)).where(ScanResult.is_latest.is_(True)),
            flt,
        )
        .group_by(*columns)
        .order_by(*columns)
        .offset(offset)
        .limit(limit)
    )
    return [
        f"{host}/{repo}:{tag}" if tag else f"{host}/{repo}@{digest}"
        for host, repo, tag, digest in session.execute(stmt)
    ]


def _filtered(stmt: _Selected, flt: ResultFilter) -> _Selected:
    if flt.search:
        stmt = stmt.where(
            or_(
                ScanResult.registry_host.icontains(flt.search, autoescape=True),
                ScanResult.repository.icontains(flt.search, autoescape=True),
                ScanResult.tag.icontains(flt.search, autoescape=True),
            )
        )
    if flt.registry is not None:
        stmt = stmt.where(ScanResult.registry_host == flt.registry)
    if flt.repository is not None:
        stmt = stmt.where(ScanResult.repository == flt.repository)
    if flt.tag is not None:
        stmt = stmt.where(ScanResult.tag == flt.tag)
    if flt.cve is not None:
        stmt = stmt.where(ScanResult.image_id.in_(images_affected_by(flt.cve)))
    if flt.package is not None:
        stmt = stmt.where(ScanResult.image_id.in_(images_holding(flt.package, flt.package_version)))
    if flt.image_id is not None:
        config_digest = select(Image.id).where(Image.config_digest == flt.image_id)
        stmt = stmt.where(
            or_(ScanResult.digest == flt.image_id, ScanResult.image_id.in_(config_digest))
        )
    return stmt


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
        .where(ScanResult.is_latest.is_(True), ScanResult.tag != "")
        .where(ScanResult.image_id.in_(images_affected_by(vuln_id)))
        .distinct()
    )
    return [(h, r, t) for h, r, t in session.execute(stmt)]
