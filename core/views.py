"""How a job looks on the wire: the API's answers and the completion callbacks render it
the same way, so a callback body equals ``GET /registry/scans/{id}`` at that moment."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Protocol


def ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


class JobLike(Protocol):
    """What the view reads of a job (``models.jobs.ScanJob``)."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> enum.Enum: ...
    @property
    def status(self) -> enum.Enum: ...
    @property
    def requested_by(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def target(self) -> dict[str, Any] | None: ...
    @property
    def target_name(self) -> str | None: ...
    @property
    def wait(self) -> bool: ...
    @property
    def images_total(self) -> int: ...
    @property
    def images_scanned(self) -> int: ...
    @property
    def images_failed(self) -> int: ...
    @property
    def images_skipped(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def discovered_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime | None: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str | None: ...


def job_view(job: JobLike) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "requestedBy": job.requested_by,
        "source": job.source,
        "target": job.target,
        "name": job.target_name,
        "waited": job.wait,
        "counts": {
            "total": job.images_total,
            "scanned": job.images_scanned,
            "failed": job.images_failed,
            "skipped": job.images_skipped,
        },
        "createdAt": ts(job.created_at),
        "startedAt": ts(job.started_at),
        "discoveredAt": ts(job.discovered_at),
        "finishedAt": ts(job.finished_at),
        "heartbeatAt": ts(job.heartbeat_at),
        "attempts": job.attempts,
        "error": job.error,
    }
