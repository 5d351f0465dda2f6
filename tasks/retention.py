"""Beat's daily purge: bodies past the retention period are emptied, decisions kept."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from scheduler import constants
from scheduler.client import Healthgate
from scheduler.runtime import Runtime
from tasks.logs import summary

log = logging.getLogger(__name__)


def register_purge(app: Celery, runtime: Callable[[], Runtime]) -> None:
    """Register the purge task on ``app``; ``runtime`` gives this process's runtime."""

    # Not shared: another app in the same process (tests) must not inherit this closure.
    @app.task(name=constants.PURGE_TASK, ignore_result=True, shared=False)
    def purge() -> dict[str, int]:
        """Empty the bodies older than ``HEALTHGATE_RETENTION_DAYS``."""
        purged = Healthgate(runtime=runtime()).purge()._asdict()
        bodies = ("messages", "webhook_events")
        done = summary({f"{n} bodies" if n in bodies else n: k for n, k in purged.items()})
        if done:
            log.info("purge: %s", done)
        return purged
