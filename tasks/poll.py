"""Beat's provider poll: line reputation and status from each provider's own answer."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from scheduler import constants
from scheduler.runtime import Runtime
from scheduler.signals.polling import poll
from tasks.logs import summary

log = logging.getLogger(__name__)


def register_poll(app: Celery, runtime: Callable[[], Runtime]) -> None:
    """Register the poll task on ``app``; ``runtime`` gives this process's runtime."""

    # Not shared: another app in the same process (tests) must not inherit this closure.
    @app.task(name=constants.POLL_TASK, ignore_result=True, shared=False)
    def poll_providers() -> dict[str, int]:
        """Ask every provider how our lines stand; apply what changed."""
        counts = poll(runtime()).counts
        # Lines that stand as they stood, or whose provider has nothing to ask, are not
        # news; what changed or failed is.
        done = summary({k: n for k, n in counts.items() if k not in {"unchanged", "skipped"}})
        if done:
            log.info("poll: %s", summary(counts))
        return counts
