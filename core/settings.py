"""One typed settings object, read from ``REGSCAN_*`` environment variables.

Load it once with :func:`get_settings` and pass it on; nothing else reads the
environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_layer_parallelism() -> int:
    """The cores this process may run on, at least 2."""
    return max(2, usable_cores())


# More API processes than this on one machine is a typing error, not a plan.
MAX_API_WORKERS = 256


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGSCAN_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///regscan.db",
        description="SQLAlchemy URL; the default is a SQLite file in the working directory.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for the Celery broker, the regular-scan lock and the stop flags.",
    )
    admin_user: str = Field(default="admin", description="Name of the first admin user.")
    admin_password: SecretStr | None = Field(
        default=None,
        description="Password of the first admin. Required except in standalone mode.",
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key that encrypts stored registry credentials; several keys, "
        "comma-separated, decrypt (the first encrypts) while rotating. The API and every "
        "worker need the same key. Standalone mode keeps one in ./regscan.key.",
    )

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret that registry push notifications must carry. When unset it is "
        "derived from the first key of REGSCAN_SECRET_KEY, so every API process agrees.",
    )

    webhook_team: str = Field(
        default="webhook",
        min_length=1,
        max_length=128,
        description="The team on-demand scans started by push events count against (its "
        "limit and its fair share), as API tokens' teams do.",
    )

    callback_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 signature on completion callbacks. Scan "
        "requests with a callbackUrl are refused while it is unset. The API and every "
        "worker need the same value.",
    )
    callback_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one callback attempt may take in all: connecting, sending and "
        "the receiver's answer.",
    )
    callback_allow: str = Field(
        default="",
        description="Receivers of callbacks allowed although their address is not public: "
        "comma-separated host names and networks in CIDR form (10.0.0.0/8). Anything else "
        "must resolve to public addresses only.",
    )
    callback_resend_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A job that ended this long ago, asked for a callback and has no "
        "delivery attempt recorded gets its callback published again (the worker that "
        "ended it died before publishing it). Jobs that ended over a day ago are left.",
    )

    max_body_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description="Largest request body the API takes; a bigger one is answered 413 "
        "before it is read.",
    )
    api_host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(default=8080, description="Port the API serves plain HTTP on.")
    api_workers: int = Field(
        default_factory=usable_cores,
        ge=1,
        le=MAX_API_WORKERS,
        description="API processes `regscan api` runs, sharing its ports: each serves "
        "requests on one core at a time. Default: the cores this process may run on.",
    )
    trusted_proxies: str = Field(
        default="",
        max_length=4096,
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For "
        "names the client (failed logins are counted per client). Empty: none, the "
        "connecting address is the client.",
    )
    api_tls_port: int = Field(
        default=8443,
        description="Port the API serves HTTPS on, when tls_cert_file and tls_key_file are set.",
    )
    tls_cert_file: str = Field(
        default="",
        description="PEM certificate (chain) the API serves HTTPS with; read again on SIGHUP.",
    )
    tls_key_file: str = Field(
        default="", description="PEM private key of tls_cert_file; read again on SIGHUP."
    )
    token_ttl_seconds: int = Field(default=1800, description="Lifetime of bearer tokens.")
    login_failures: int = Field(
        default=10,
        gt=0,
        description="Failed logins one client address may make per login_window_seconds "
        "(one user name: five times that); past that, logins are answered 429 with "
        "Retry-After.",
    )
    login_window_seconds: int = Field(
        default=60, gt=0, description="The window failed logins are counted over."
    )
    login_concurrency: int = Field(
        default=1,
        gt=0,
        description="Password checks (argon2, 64 MiB each) one API process runs at once; "
        "others wait for a turn, up to a few seconds.",
    )

    lock_ttl_seconds: float = Field(
        default=30.0, description="TTL of the regular-scan lock; a dead holder frees it by then."
    )
    heartbeat_seconds: float = Field(
        default=5.0, description="How often a running scan renews its lock and heartbeat."
    )
    reaper_seconds: float = Field(
        default=10.0, description="How often workers look for scans whose heartbeat went stale."
    )
    ondemand_stale_seconds: float = Field(
        default=600.0, description="An on-demand scan silent this long is retried or failed."
    )
    ondemand_requeue_seconds: float = Field(
        default=30.0,
        gt=0,
        description="An on-demand scan still queued after this long whose id is in no "
        "team's queue in Redis (lost with Redis, or never pushed by an API that died) is "
        "queued again.",
    )
    max_attempts: int = Field(
        default=3, description="Times a scan is taken up again after its worker died."
    )
    stop_grace_seconds: float = Field(
        default=30.0, description="How long a stopping scan waits for images in flight."
    )
    stuck_image_seconds: float = Field(
        default=900.0,
        description="An image handed to a worker that has not finished after this long "
        "is handed out again (the worker is taken to be gone).",
    )
    layer_lock_seconds: float = Field(
        default=10.0,
        gt=0,
        description="TTL of the lock a worker holds while it downloads and analyses a "
        "layer; the holder renews it every third of that, so a live holder keeps it for "
        "as long as the layer takes, and a dead one frees it within this.",
    )
    layer_parallelism: int = Field(
        default_factory=default_layer_parallelism,
        ge=1,
        description="Layers of one image downloaded and read at once, each in a thread "
        "of its own, then merged in the image's order. Default: the cores this process "
        "may use, at least 2 (downloads overlap waiting on the network even on one core).",
    )
    max_layer_expanded_bytes: int = Field(
        default=8 << 30, description="Cap on the uncompressed bytes of one layer."
    )
    team_ondemand_limit: int = Field(
        default=2000,
        description="On-demand scans one team may have waiting or running; past it the "
        "API answers 429 with Retry-After.",
    )
    dispatch_batch: int = Field(
        default=200, description="Discovered images written per transaction during discovery."
    )
    sweep_batch: int = Field(
        default=50,
        ge=1,
        description="Most images of a sweep one task carries; a specification's scanners "
        "are that many tasks at once, each scanning its images one after the other.",
    )
    sweep_write_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How long a sweep's task keeps the images it scanned before it writes "
        "them in one transaction (sooner when it has a whole batch).",
    )

    schedule_min_period_ms: int = Field(
        default=3_600_000,
        description="Shortest registryScanPeriodMs accepted (0 always disables); "
        "lowered only by tests that speed the clock up.",
    )
    schedule_cron_seconds: bool = Field(
        default=False,
        description="Accept a six-field cron expression whose first field is seconds.",
    )
    schedule_poll_seconds: float = Field(
        default=5.0,
        description="Longest a scheduler sleeps before reading the schedule again.",
    )

    registry_connect_timeout: float = Field(default=5.0, description="Seconds to connect.")
    registry_read_timeout: float = Field(
        default=30.0, description="Seconds to wait for a registry's next bytes."
    )
    registry_retries: int = Field(default=4, description="Retries on 429/5xx and lost connections.")
    registry_backoff: float = Field(default=0.5, description="Base of the exponential backoff.")
    registry_backoff_max: float = Field(default=30.0, description="Cap on one backoff sleep.")

    vulndb_sources: str = Field(
        default="",
        description="OSV data the workers refresh on their own: comma-separated paths "
        "(a JSON file, a folder, a zip such as osv.dev's all.zip) and http(s) URLs.",
    )
    vulndb_refresh_seconds: float = Field(
        default=6 * 3600.0,
        description="How often the configured sources are refreshed (once per period "
        "for the whole cluster; unchanged downloads are skipped by ETag/Last-Modified).",
    )
    vulndb_download_timeout: float = Field(
        default=60.0, description="Seconds to wait for a vulnerability data server's bytes."
    )
    vulndb_osv_url: str = Field(
        default="https://osv-vulnerabilities.storage.googleapis.com",
        description="Where the OSV exports are fetched from when no sources are configured: "
        "<url>/<ecosystem>/all.zip for each ecosystem the stored images hold. Empty: no "
        "vulnerability data is fetched unless sources are configured.",
    )
    vulndb_retry_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A source whose last refresh failed, or that was never fetched, is "
        "tried again after this long rather than at the next refresh period.",
    )
    rematch_batch: int = Field(
        default=200,
        gt=0,
        description="Images linked to their package versions per re-match task.",
    )
    rematch_versions: int = Field(
        default=2000,
        gt=0,
        description="Package versions matched again per re-match task when the "
        "vulnerability data changed: each task then updates the counts of every image "
        "holding them at once, so fewer, larger tasks rewrite each image fewer times.",
    )

    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one readable line per event; json: one JSON object per line "
        "with the job, image, team and task it concerns.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that may read /metrics (for Prometheus); users and API "
        "tokens with any role may read it too.",
    )
    metrics_flush_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often a worker adds its counters to the shared totals in Redis.",
    )

    @property
    def serves_tls(self) -> bool:
        """Whether the API has a certificate and key to serve HTTPS with."""
        return bool(self.tls_cert_file and self.tls_key_file)

    @property
    def vulndb_locations(self) -> list[str]:
        """The configured sources, one per entry of ``vulndb_sources``."""
        return [s.strip() for s in self.vulndb_sources.split(",") if s.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
