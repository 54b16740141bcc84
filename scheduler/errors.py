"""Errors of the scheduling policy; only the API layer turns them into HTTP answers."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base of every refusal the scheduler makes."""


class ScanConflict(SchedulerError):
    """A regular scan is already queued or running."""

    def __init__(self, job_id: int, status: str, name: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(
            f"regular scan {job_id} ({name}) is {status}; only one regular scan runs at a time. "
            "Stop it with POST /api/v1/registry/stop, or ask again with ?wait=true to queue "
            "this scan until it ends."
        )


class OutOfScope(SchedulerError):
    """The image is not covered by any registry specification."""


class NoSpecifications(SchedulerError):
    """Nothing is configured to scan."""


class NothingSelected(SchedulerError):
    """A selection or campaign that names no image."""


class TeamOverLimit(SchedulerError):
    """A team has as many on-demand scans waiting as it may; ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(SchedulerError):
    """A short admission lock could not be taken in time; the caller may retry."""


class Unavailable(SchedulerError):
    """Redis could not take the job's task: the job was withdrawn, nothing runs, and the
    caller may ask again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
