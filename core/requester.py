"""Who asked for a job, carried as one value from the request to the job row."""

from __future__ import annotations

from dataclasses import dataclass

# The source of the on-demand jobs Harbor asks for through its pluggable scanner API;
# only those carry pull credentials of their own (core/keys.py ``pull_authorization``).
HARBOR_SOURCE = "harbor"


@dataclass(frozen=True)
class Requester:
    """The name shown as ``requestedBy``, the team whose limits and fair share the job
    counts against, where the request came from (``api``, ``settings``, ``schedule``,
    ``webhook``, ``campaign``, ``harbor``) and where to POST the job's final state (""
    for nowhere)."""

    name: str
    team: str = ""
    source: str = "api"
    callback_url: str = ""
