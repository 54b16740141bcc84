"""How many on-demand scans a team has waiting or running, as the team limit needs it.

Counting them in the database costs in proportion to the team's backlog, and every
on-demand request would pay it. So the count is kept in Redis as an upper bound, shared
by every API process: set from the database's count, and raised by every admission
(jobs that end do not lower it, so it can only be too high). While the bound, with the
new scans added, is within the limit, the request is admitted on it. Only when it says
the limit is crossed is the database asked, and the request refused on its answer; the
bound starts again from that answer. It lives ``TEAM_ACTIVE_TTL_SECONDS``, so it never
drifts far from the truth; when Redis does not answer, the database is asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from core import keys

log = logging.getLogger(__name__)

# KEYS: the team's bound; ARGV: scans being added. The bound raised, or false when
# there is none (it expired, or Redis lost it): the caller counts.
_RAISE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


def within_limit(
    redis: Redis, team: str, adding: int, limit: int, count: Callable[[], int]
) -> tuple[bool, int]:
    """Whether ``adding`` more scans keep ``team`` within ``limit``, and the number it
    has (from ``count()``, the database's count, when that was asked). Admitting counts
    the new scans in the bound."""
    key = keys.team_active(team)
    try:
        bound = redis.register_script(_RAISE)(keys=[key], args=[adding])
    except RedisError:
        log.warning("team=%s on-demand scans counted in the database: Redis is not answering", team)
        bound = None
    if bound is not None and int(bound) <= limit:
        return True, int(bound) - adding
    active = count()
    admitted = active + adding <= limit
    try:
        # From the count, and this request's scans if they are admitted.
        value = active + adding if admitted else active
        redis.set(key, value, ex=keys.TEAM_ACTIVE_TTL_SECONDS)
    except RedisError:
        pass
    return admitted, active
