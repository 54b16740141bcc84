"""Who asked for a job, carried as one value from the request to the job row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Requester:
    """The name shown as ``requestedBy``, the team whose limits and fair share the job
    counts against, where the request came from (``api``, ``settings``, ``schedule``,
    ``webhook``, ``campaign``) and where to POST the job's final state ("" for nowhere)."""

    name: str
    team: str = ""
    source: str = "api"
    callback_url: str = ""
