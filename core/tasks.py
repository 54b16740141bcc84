"""The Celery queues and task names, and the one publisher every layer sends tasks through.

Tasks are sent by name, so whoever publishes (the API, the scheduler, a worker, the
command line) never imports the worker's task code. Each task has its own queue, so a
sweep's thousands of images never delay an on-demand scan:

==========================  ==================  =============================================
task                        queue               what it does
==========================  ==================  =============================================
regscan.run_regular_scan    regscan.regular     orchestrates one regular scan under the lease
regscan.scan_image          regscan.images      scans a batch of images of a regular scan
                                                (args: item id, attempt, item id, ...)
regscan.scan_on_demand      regscan.ondemand    runs one on-demand job again: its worker went
                                                silent, or a service went away while it ran
regscan.scan_on_demand_next regscan.ondemand    a slot: runs the next job of the team whose
                                                turn it is (core/fair.py)
regscan.rematch             regscan.rematch     re-matches a batch of stored inventories
regscan.deliver_callback    regscan.callbacks   POSTs a job's final state to its callbackUrl
==========================  ==================  =============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery

from core.settings import Settings

QUEUE_REGULAR = "regscan.regular"
QUEUE_IMAGES = "regscan.images"
QUEUE_ONDEMAND = "regscan.ondemand"
# Re-matching stored inventories when the vulnerability data changed: no registry work.
QUEUE_REMATCH = "regscan.rematch"
# Completion callbacks to other teams' URLs: a slow receiver never holds up a scan.
QUEUE_CALLBACKS = "regscan.callbacks"
# The short names ``regscan worker --queues`` takes.
QUEUES = {
    "regular": QUEUE_REGULAR,
    "images": QUEUE_IMAGES,
    "ondemand": QUEUE_ONDEMAND,
    "rematch": QUEUE_REMATCH,
    "callbacks": QUEUE_CALLBACKS,
}

TASK_REGULAR = "regscan.run_regular_scan"
TASK_IMAGE = "regscan.scan_image"
TASK_ONDEMAND = "regscan.scan_on_demand"
TASK_ONDEMAND_NEXT = "regscan.scan_on_demand_next"
TASK_REMATCH = "regscan.rematch"
TASK_CALLBACK = "regscan.deliver_callback"

QUEUE_OF = {
    TASK_REGULAR: QUEUE_REGULAR,
    TASK_IMAGE: QUEUE_IMAGES,
    TASK_ONDEMAND: QUEUE_ONDEMAND,
    TASK_ONDEMAND_NEXT: QUEUE_ONDEMAND,
    TASK_REMATCH: QUEUE_REMATCH,
    TASK_CALLBACK: QUEUE_CALLBACKS,
}


def make_celery(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """The Celery application on ``settings.redis_url``; ``include`` names the modules
    holding task code (only the worker loads them)."""
    app = Celery("regscan", broker=settings.redis_url, include=list(include))
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
        task_default_queue=QUEUE_IMAGES,
        task_routes={task: {"queue": queue} for task, queue in QUEUE_OF.items()},
        # Redelivery of unacknowledged messages happens after this long. A sweep
        # outlives it, so the orchestrator tolerates a duplicate of itself; lost
        # work is found sooner by the reaper, through heartbeats.
        broker_transport_options={"visibility_timeout": 6 * 3600},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


class Sender(Protocol):
    """Sends a task by name: ``celery.Celery.send_task`` fits."""

    def send_task(self, name: str, args: Sequence[Any] | None = ..., **options: Any) -> Any: ...


class Publisher:
    """One named method per task: the only place that sends tasks."""

    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    def regular_scan(self, job_id: int) -> None:
        self._send(TASK_REGULAR, job_id)

    def image_scan(self, item_id: int, attempt: int) -> None:
        self._send(TASK_IMAGE, item_id, attempt)

    def image_scans(self, items: Sequence[tuple[int, int]]) -> None:
        """One task for a batch of a sweep's images, given as (item id, attempt) pairs:
        the pairs go flat, so a batch of one is the message ``image_scan`` sends."""
        self._send(TASK_IMAGE, *(n for pair in items for n in pair))

    def on_demand(self, job_id: int, attempt: int | None) -> None:
        """Run this on-demand job again: the run on its ``attempt``-th attempt stopped
        (None: it never started)."""
        self._send(TASK_ONDEMAND, job_id, attempt)

    def on_demand_slot(self) -> None:
        """One turn on the on-demand queue; which job it runs is decided when it runs."""
        self._send(TASK_ONDEMAND_NEXT)

    def rematch(self) -> None:
        self._send(TASK_REMATCH)

    def callback(self, job_id: int) -> None:
        self._send(TASK_CALLBACK, job_id)

    def _send(self, task: str, *args: Any) -> None:
        self.sender.send_task(task, args=list(args), queue=QUEUE_OF[task])
