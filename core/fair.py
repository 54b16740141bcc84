"""Fair dispatch of on-demand scans between teams.

Each team's waiting on-demand jobs sit in a Redis list of their own, and a ring holds
the teams that have some waiting. Every Celery message for the on-demand queue is a
slot, not a job: the worker that takes it runs the next job of the team at the head of
the ring, then puts that team at the back. So a team that enqueued a thousand scans
gets one in turn with every other team, instead of the queue draining its backlog
first. Both moves are Lua scripts, atomic in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis import Redis

from core import keys

# KEYS: team list, ring, active set; ARGV: team, job ids...
_PUSH = """
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
if redis.call('SADD', KEYS[3], ARGV[1]) == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return #ARGV - 1
"""

# KEYS: ring, active set; ARGV: prefix of the team lists
_POP = """
local team = redis.call('LPOP', KEYS[1])
if not team then return false end
local list = ARGV[1] .. team
local job = redis.call('LPOP', list)
if redis.call('LLEN', list) > 0 then
  redis.call('RPUSH', KEYS[1], team)
else
  redis.call('SREM', KEYS[2], team)
end
return job
"""


def push(redis: Redis, team: str, job_ids: Iterable[int]) -> None:
    """Put a team's new jobs at the end of its list, and the team in the ring."""
    ids = [str(i) for i in job_ids]
    if ids:
        script = redis.register_script(_PUSH)
        script(keys=[keys.fair_team(team), keys.FAIR_RING, keys.FAIR_ACTIVE], args=[team, *ids])


def pop(redis: Redis) -> int | None:
    """The next job to run, taking teams in turn; None when no job waits."""
    script = redis.register_script(_POP)
    job = script(keys=[keys.FAIR_RING, keys.FAIR_ACTIVE], args=[keys.fair_team("")])
    return int(job) if job else None


def teams(redis: Redis) -> list[str]:
    """The teams with jobs waiting."""
    return sorted(
        t.decode() if isinstance(t, bytes) else str(t) for t in redis.smembers(keys.FAIR_ACTIVE)
    )


def oldest(redis: Redis, team: str) -> int | None:
    """The id of a team's job that has waited longest, if any."""
    head = redis.lindex(keys.fair_team(team), 0)
    return int(head) if head is not None else None


def waiting(redis: Redis, team: str) -> set[int]:
    """The ids of a team's jobs waiting for their turn."""
    return {int(job_id) for job_id in redis.lrange(keys.fair_team(team), 0, -1)}
