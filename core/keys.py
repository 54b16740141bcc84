"""Every Redis key regscan uses, with what it holds. Nothing else builds key names.

=================================  =====================================================
key                                holds
=================================  =====================================================
regscan:lock:regular-scan          redis-py Lock of the running regular scan; value is the
                                   holder's random token; TTL ``lock_ttl_seconds``, renewed
                                   by the holder's heartbeat. Contention: a second
                                   orchestrator does not wait for it; it retries later.
regscan:fence:regular-scan         counter; each lock acquisition takes the next value as
                                   its fencing token, stored on the job row. Writes made
                                   under an older token are refused by the database.
regscan:lock:admission             redis-py Lock, TTL 10 s, held for the few milliseconds in
                                   which a regular scan is admitted or the next waiting
                                   one is started, so two API processes cannot both admit.
regscan:stop:<job id>              "1" while a stop of that regular scan is asked for;
                                   TTL one day. Checked before each enqueue and at each
                                   image checkpoint.
regscan:lock:layer:<digest>        redis-py Lock held while one worker downloads and
                                   analyses that layer; TTL ``layer_lock_seconds``,
                                   renewed by the holder every third of it, so a dead
                                   holder's lock frees within the TTL. Contention:
                                   others poll for it (checking for stop) and then read
                                   the analysis from the layer cache.
regscan:lock:image:<sha256>        redis-py Lock held while one of a sweep's batches
                                   describes and inventories an image (a manifest digest
                                   in a repository; the key hashes registry, repository
                                   and digest) and stores it, so tags pointing at it in
                                   other batches fetch nothing of it; TTL and renewal as a
                                   layer's. Contention: others poll for it (checking for
                                   stop), then find the image stored; after a bounded wait
                                   they describe it themselves.
regscan:vulndb:refresh             the node name of the worker refreshing the configured
                                   vulnerability data sources this period; SET NX with a
                                   TTL of ``vulndb_refresh_seconds``, so one refresh fires
                                   per period cluster-wide. Contention: the others skip.
regscan:vulndb:rematch-kick        "1" for a minute after a worker's periodic pass found
                                   images matched against older data and published a
                                   re-match; SET NX EX, so the passes of many workers
                                   publish one re-match chain, not one each.
regscan:callback:resent:<job id>   "1" for an hour after a worker's periodic pass published
                                   again the callback of an ended job with no delivery
                                   attempt; SET NX EX, so it is published again once, not
                                   once per worker.
regscan:vulndb:retry:<location>   the node name of the worker fetching again a vulnerability
                                   data source that failed or was never fetched; SET NX EX
                                   ``vulndb_retry_seconds``, so one worker tries it, once
                                   per that time.
regscan:metrics                    hash of the workers' counters and histogram buckets
                                   (core/telemetry.py): field = metric name and labels as
                                   JSON, value = the cluster-wide total; HINCRBYFLOAT by
                                   each worker's flush, HGETALL by the API's /metrics.
regscan:login:client:<address>     count of failed logins from one client address in the
                                   current window; INCR, EXPIRE login_window_seconds.
                                   Past login_failures, logins from it are refused (429).
regscan:login:user:<sha256>        the same, per user name (its SHA-256: names are
                                   whatever a client sends).
regscan:housekeeping               the node name of the worker that pruned expired
                                   idempotency keys, old push events and data changes every
                                   image is past this hour; SET NX EX 3600, so one worker
                                   prunes per hour.
regscan:fair:ring                  list of the teams with on-demand jobs waiting, in the
                                   order they get their next turn (core/fair.py).
regscan:fair:active                set of the teams in the ring, so each is there once.
regscan:fair:team:<team>           list of a team's waiting on-demand job ids, oldest
                                   first. All three change only through the Lua scripts
                                   of core/fair.py.
regscan:fair:nudged:<team>         "1" for ondemand_requeue_seconds after a recovery pass
                                   published a spare slot because the team's oldest job
                                   had waited that long (its slot may have been lost);
                                   SET NX EX, so one spare per period cluster-wide.
regscan:team-active:<team>         an upper bound of the team's on-demand jobs waiting or
                                   running, so that a scan request need not count them
                                   in the database: set from that count, added to by
                                   every admission (scheduler/team_limit.py); TTL
                                   ``TEAM_ACTIVE_TTL_SECONDS``, then counted again.
regscan:pull-auth:<job id>         the HTTP Authorization Harbor gave for pulling the image
                                   of that on-demand job (``POST /harbor/api/v1/scan``).
                                   Set by the API before the job is queued, read by the
                                   worker that scans it, deleted when the job ends; TTL
                                   ``PULL_AUTHORIZATION_TTL_SECONDS`` if it never ends. It
                                   is never written to the database or a log.
=================================  =====================================================

Celery keeps its own keys (the queues of :mod:`core.tasks` and ``unacked*``) in the same
database.
"""

from __future__ import annotations

import hashlib

REGULAR_LOCK = "regscan:lock:regular-scan"
REGULAR_FENCE = "regscan:fence:regular-scan"
ADMISSION_LOCK = "regscan:lock:admission"
STOP_FLAG_TTL_SECONDS = 24 * 3600


VULNDB_REFRESH = "regscan:vulndb:refresh"
REMATCH_KICK = "regscan:vulndb:rematch-kick"
REMATCH_KICK_SECONDS = 60
METRICS = "regscan:metrics"


def vulndb_retry(location: str) -> str:
    return f"regscan:vulndb:retry:{location}"


FAIR_RING = "regscan:fair:ring"
FAIR_ACTIVE = "regscan:fair:active"


TEAM_ACTIVE_TTL_SECONDS = 5


def team_active(team: str) -> str:
    return f"regscan:team-active:{team}"


def fair_team(team: str) -> str:
    return f"regscan:fair:team:{team}"


def fair_nudged(team: str) -> str:
    return f"regscan:fair:nudged:{team}"


CALLBACK_RESENT_SECONDS = 3600
HOUSEKEEPING = "regscan:housekeeping"
HOUSEKEEPING_SECONDS = 3600


def login_failures_of_client(address: str) -> str:
    return f"regscan:login:client:{address}"


def login_failures_of_user(username_sha256: str) -> str:
    return f"regscan:login:user:{username_sha256}"


def callback_resent(job_id: int) -> str:
    return f"regscan:callback:resent:{job_id}"


PULL_AUTHORIZATION_TTL_SECONDS = 6 * 3600


def pull_authorization(job_id: int) -> str:
    return f"regscan:pull-auth:{job_id}"


def stop_flag(job_id: int) -> str:
    return f"regscan:stop:{job_id}"


def layer_lock(digest: str) -> str:
    return f"regscan:lock:layer:{digest}"


def image_lock(registry_host: str, repository: str, digest: str) -> str:
    # Hashed: a repository name is as long as a registry lets it be.
    name = f"{registry_host}/{repository}@{digest}".encode()
    return f"regscan:lock:image:{hashlib.sha256(name).hexdigest()}"
