"""Scan jobs, the images each job covers, and the result of each image scan.

State changes go through the named functions in :mod:`models.services`; nothing
else assigns ``status``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, enum_column, utcnow


class JobKind(enum.Enum):
    REGULAR_ALL = "regular-all"
    REGULAR_IMAGE = "regular-image"
    # A regular scan of a chosen set of images: a selection or a campaign by query.
    REGULAR_SELECT = "regular-select"
    ON_DEMAND = "on-demand"

    @property
    def is_regular(self) -> bool:
        return self is not JobKind.ON_DEMAND


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


REGULAR_KINDS = (JobKind.REGULAR_ALL, JobKind.REGULAR_IMAGE, JobKind.REGULAR_SELECT)
FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.STOPPED, JobStatus.FAILED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.STOPPING})


class ItemStatus(enum.Enum):
    PENDING = "pending"  # discovered, not handed to a worker yet
    QUEUED = "queued"  # Celery message sent
    RUNNING = "running"  # a worker claimed it
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # never started because the scan was stopped

    @property
    def is_final(self) -> bool:
        return self in (ItemStatus.DONE, ItemStatus.FAILED, ItemStatus.SKIPPED)


class ScanJob(Base):
    __tablename__ = "scan_jobs"
    __table_args__ = (
        Index("ix_scan_jobs_kind_status", "kind", "status"),
        Index("ix_scan_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_scan_jobs_team_kind_status", "team", "kind", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(enum_column(JobKind))
    status: Mapped[JobStatus] = mapped_column(enum_column(JobStatus), default=JobStatus.QUEUED)
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    # Where the request came from: api, settings, schedule, webhook, ...
    source: Mapped[str] = mapped_column(String(32), default="api")
    # The image asked for, for single-image jobs: {registry, repo, tag, digest}.
    target: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The caller asked to wait for the running regular scan instead of being refused.
    wait: Mapped[bool] = mapped_column(Boolean, default=False)
    # The team of the API token that asked (fairness and limits are per team).
    team: Mapped[str] = mapped_column(String(128), default="")
    # A campaign's or a selected scan's scope: {"images": [...]} or {"query": {...}}.
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Where to deliver the final state, signed (see worker/callbacks.py).
    callback_url: Mapped[str] = mapped_column(String(2048), default="")

    images_total: Mapped[int] = mapped_column(Integer, default=0)
    images_scanned: Mapped[int] = mapped_column(Integer, default=0)
    images_failed: Mapped[int] = mapped_column(Integer, default=0)
    images_skipped: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    published_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    discovered_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    # Token of the current lease holder (regular scans). A worker whose lease was
    # taken over holds an older token and its writes are refused.
    fencing_token: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # How many times a worker took this job on (1 normally; more after takeovers).
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def target_name(self) -> str | None:
        if not self.target:
            return None
        t = self.target
        name = f"{t['registry']}/{t['repo']}"
        if t.get("tag"):
            name += f":{t['tag']}"
        if t.get("digest"):
            name += f"@{t['digest']}"
        return name


class ImageScan(Base):
    """One image reference a job has to scan: a tag or digest in a repository."""

    __tablename__ = "image_scans"
    __table_args__ = (
        Index("ix_image_scans_job_id_status", "job_id", "status"),
        Index("ix_image_scans_image", "repository", "tag", "registry_host"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"))
    # Index of the specification this image was found through (scanner limits).
    spec_position: Mapped[int] = mapped_column(Integer, default=0)
    # Where to connect, scheme included; ``registry_host`` is the host:port identity.
    registry_url: Mapped[str] = mapped_column(String(300))
    registry_host: Mapped[str] = mapped_column(String(255))
    # The credential of the specification the image was found through ("" for none).
    credential_id: Mapped[str] = mapped_column(String(128), default="")
    # The specification's os: only platform images of it are scanned ("" for any).
    os: Mapped[str] = mapped_column(String(32), default="")
    repository: Mapped[str] = mapped_column(String(512))
    tag: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[ItemStatus] = mapped_column(enum_column(ItemStatus), default=ItemStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Lease token the item was dispatched under; results under another token are refused.
    fence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class ScanResult(Base):
    """What one image scan found for one platform image. History is kept;
    ``is_latest`` marks the current result of each (registry host, repository, tag, platform)."""

    __tablename__ = "scan_results"
    __table_args__ = (
        Index("ix_scan_results_latest_order", "is_latest", "registry_host", "repository", "tag"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("scan_jobs.id", ondelete="CASCADE"), index=True)
    image_scan_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_scans.id", ondelete="SET NULL"), index=True, default=None
    )
    image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL"), index=True, default=None
    )
    registry_host: Mapped[str] = mapped_column(String(255))
    repository: Mapped[str] = mapped_column(String(512))
    tag: Mapped[str] = mapped_column(String(255), default="")
    digest: Mapped[str] = mapped_column(String(100), default="", index=True)
    platform: Mapped[str] = mapped_column(String(64), default="")
    scanned_at: Mapped[datetime] = mapped_column(default=utcnow)
    err: Mapped[str] = mapped_column(Text, default="")
    os_distro: Mapped[str] = mapped_column(String(64), default="")
    os_distro_version: Mapped[str] = mapped_column(String(64), default="")
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)


# At most one current result per tagged platform image; concurrent writers of the
# same image (a sweep and an on-demand scan) collide here instead of both winning.
Index(
    "uq_scan_results_latest",
    ScanResult.registry_host,
    ScanResult.repository,
    ScanResult.tag,
    ScanResult.platform,
    unique=True,
    sqlite_where=text("is_latest"),
    postgresql_where=text("is_latest"),
)
