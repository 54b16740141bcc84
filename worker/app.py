"""The Celery application: Redis broker, five queues, tasks safe to run twice."""

from __future__ import annotations

from celery import Celery

from regscan.settings import Settings, get_settings
from scheduler import keys


def make_celery(settings: Settings) -> Celery:
    app = Celery("regscan", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A message is acknowledged only when its task returns; a worker killed
        # mid-task leaves it for redelivery, and every task returns early when its
        # work is already done.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=keys.QUEUE_IMAGES,
        task_routes={
            keys.TASK_REGULAR: {"queue": keys.QUEUE_REGULAR},
            keys.TASK_IMAGE: {"queue": keys.QUEUE_IMAGES},
            keys.TASK_ONDEMAND: {"queue": keys.QUEUE_ONDEMAND},
            keys.TASK_ONDEMAND_NEXT: {"queue": keys.QUEUE_ONDEMAND},
            keys.TASK_REMATCH: {"queue": keys.QUEUE_REMATCH},
            keys.TASK_CALLBACK: {"queue": keys.QUEUE_CALLBACKS},
        },
        # Redelivery of unacknowledged messages happens after this long. A sweep
        # outlives it, so the orchestrator tolerates a duplicate of itself; lost
        # work is found sooner by the reaper, through heartbeats.
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery(get_settings())
