"""The worker's Celery application: the shared configuration of :mod:`core.tasks`, plus
the task code in :mod:`worker.tasks`."""

from __future__ import annotations

from core.settings import get_settings
from core.tasks import make_celery

app = make_celery(get_settings(), include=["worker.tasks"])
