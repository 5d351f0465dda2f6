"""The Celery app, built from settings: broker, reliability options, beat schedule, tasks."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_process_shutdown

from scheduler import constants, metrics
from scheduler.client import Healthgate
from scheduler.files import private_dir
from scheduler.runtime import Runtime
from scheduler.settings import Settings, masked_url
from tasks import intake
from tasks.dispatch import register
from tasks.logs import quiet
from tasks.outcomes import register_outcomes
from tasks.poll import register_poll
from tasks.retention import register_purge

log = logging.getLogger(__name__)


class RuntimeHolder:
    """One runtime per process, built on first use after any fork.

    Database connections and provider clients must not cross a fork, so a prefork
    child builds its own instead of inheriting the parent's.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Runtime | None = None
        self._pid = 0

    def get(self) -> Runtime:
        if self._runtime is None or self._pid != os.getpid():
            self._runtime = Runtime.build(self.settings)
            self._pid = os.getpid()
            if self.settings.database.startswith("sqlite"):
                # The embedded default sets itself up; servers are migrated by the operator.
                Healthgate(runtime=self._runtime).ensure_schema()
        return self._runtime

    def close(self) -> None:
        if self._runtime is not None and self._pid == os.getpid():
            self._runtime.close()
        self._runtime = None


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` (from the environment when not given)."""
    settings = settings or Settings()
    app = Celery("healthgate", broker=_broker_url(settings.broker), set_as_current=False)
    app.conf.update(_config(settings))
    log.info("healthgate tasks: broker %s", masked_url(settings.broker))
    register_all(app, settings)
    # The worker and beat set up logging when they start: leave out the lines that say
    # nothing happened (see ``tasks.logs``).
    after_setup_logger.connect(quiet, weak=False)
    return app


def register_all(app: Celery, settings: Settings) -> None:
    """Register every healthgate task on ``app``, sharing one runtime per process."""
    holder = RuntimeHolder(settings)
    register(app, holder.get, settings)
    intake.register(app, holder.get, settings)
    register_poll(app, holder.get)
    register_purge(app, holder.get)
    register_outcomes(app, holder.get, settings)

    @worker_process_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        holder.close()
        # A prefork child leaves its counts in the multiprocess folder; its live gauges go.
        metrics.process_exited(os.getpid())


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's entries for healthgate: the tick, the provider poll, the delivery of
    outcomes and the daily purge."""
    return {
        "healthgate-tick": {
            "task": constants.TICK_TASK,
            "schedule": settings.tick_seconds,
            "options": {"expires": constants.TICK_EXPIRES_SECONDS},
        },
        "healthgate-poll": {
            "task": constants.POLL_TASK,
            "schedule": settings.poll_seconds,
            # A poll still queued when the next is due is stale: drop it.
            "options": {"expires": settings.poll_seconds},
        },
        # The application's callback is told of finished messages from the outbox.
        "healthgate-outcomes": {
            "task": constants.OUTCOMES_TASK,
            "schedule": settings.tick_seconds,
            "options": {"expires": constants.TICK_EXPIRES_SECONDS},
        },
        "healthgate-purge": {
            "task": constants.PURGE_TASK,
            "schedule": constants.PURGE_SECONDS,
            # The next day's purge does the same work: a stale one is dropped.
            "options": {"expires": constants.PURGE_SECONDS},
        },
    }


def _broker_url(url: str) -> str:
    """The folder broker with its host named: kombu warns at every start, in the worker
    and in beat, that ``filesystem://`` supplied none (it is never used)."""
    return "filesystem://localhost/" if url == "filesystem://" else url


def _config(settings: Settings) -> dict[str, Any]:
    private_dir(settings.data_dir)
    config: dict[str, Any] = {
        "task_default_queue": constants.DEFAULT_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "timezone": "UTC",
        "enable_utc": True,
        # A dispatch task is acknowledged only after it ran, and handed back if its
        # worker dies: the claim's fence token keeps a redelivery from sending twice.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One task at a time per process: a prefetched batch would sit behind a slow one
        # while its lease runs down.
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.data_dir / constants.BEAT_SCHEDULE_FILE),
    }
    if settings.broker.startswith("filesystem"):
        folder = settings.broker_dir
        # Task messages are the ids of messages: the owner's only, like the rest.
        private_dir(folder)
        private_dir(folder / "queue")
        private_dir(folder / "control")
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    elif settings.broker.startswith(("redis", "rediss")):
        # Longer than any lease: Redis redelivers unacknowledged tasks after this.
        config["broker_transport_options"] = {"visibility_timeout": int(settings.lease_seconds * 3)}
    return config
