"""Outcomes to the application's own Celery task: the delivery task beat runs every tick.

The callback gets one argument, the outcome (``scheduler.outcomes.payload``), sent by
name, so the application's worker needs nothing of healthgate:

    @app.task(name="shop.message_outcome")
    def message_outcome(outcome: dict) -> None: ...

Its Celery task id is the outcome's id, the same on every delivery of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import Celery, Task

from scheduler import constants
from scheduler.outcomes import Callback, deliver
from scheduler.outcomes.webhook import WebhookCallback
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from tasks.logs import summary

log = logging.getLogger(__name__)

#: Publishing waits this long at most for a broker that does not answer; the outcome is
#: then tried again at a later tick, and the delivery task does not hold its worker.
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


class TaskCallback:
    """Sends each outcome to the application's task ``name`` on ``queue``."""

    def __init__(self, app: Celery, name: str, queue: str) -> None:
        self.app = app
        self.name = name
        self.queue = queue
        self.target = f"task {name} (queue {queue})"

    def deliver(self, outcome: dict[str, Any], now: datetime) -> None:
        """Publish the call; a broker that refuses it raises, and it is tried again."""
        self.app.send_task(
            self.name,
            args=[outcome],
            queue=self.queue,
            task_id=outcome["id"],
            serializer="json",
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )

    def close(self) -> None:
        pass


def callback_for(app: Celery, settings: Settings) -> Callback | None:
    """The callback ``settings`` name: a task of the application's, a webhook, or none."""
    if settings.outcome_task:
        return TaskCallback(app, settings.outcome_task, settings.outcome_queue)
    if settings.outcome_url and settings.outcome_secret:
        return WebhookCallback(settings.outcome_url, settings.outcome_secret.get_secret_value())
    return None


def register_outcomes(app: Celery, runtime: Callable[[], Runtime], settings: Settings) -> None:
    """Register the delivery task on ``app``; ``runtime`` gives this process's runtime."""
    callbacks: dict[str, Callback | None] = {}

    # Not shared: another app in the same process (tests) must not inherit this closure.
    @app.task(
        name=constants.OUTCOMES_TASK,
        ignore_result=True,
        shared=False,
        bind=True,
        # Stopped by its worker before its lease ends, whatever a callback does (prefork).
        time_limit=constants.OUTCOME_TASK_TIME_LIMIT_SECONDS,
    )
    def outcomes(task: Task[Any, Any]) -> dict[str, int]:
        """Hand the outcomes due to the application's callback; a failure waits its turn."""
        if "callback" not in callbacks:
            callbacks["callback"] = callback_for(task.app, settings)
        done = deliver(runtime(), callbacks["callback"], utcnow())
        if (said := summary(done)) and set(done) != {"discarded"}:
            log.info("outcomes: %s", said)
        return done
