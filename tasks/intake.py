"""Enqueue through the broker: ``healthgate.enqueue`` and ``healthgate.enqueue_many``.

An application that only sends Celery tasks by name, without importing healthgate,
gives the enqueue arguments as JSON (times as ISO 8601 strings with an offset). Bad
input is an answer, not a failure: the task returns ``{"error": ..., "field": ...}``,
stores nothing and is never retried. A database outage is retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from sqlalchemy.exc import OperationalError

from policies.durations import parse_time
from policies.errors import IdempotencyConflict, InvalidInput
from scheduler import constants
from scheduler.intake.enqueue import enqueue_many
from scheduler.runtime import Runtime
from scheduler.settings import Settings

log = logging.getLogger(__name__)

#: The message fields that carry a time: ISO 8601 text on the wire.
_TIMES = ("send_at", "expires_at")

#: Options every healthgate task of this module runs with: acknowledged after it ran and
#: handed back if its worker dies (an enqueue is idempotent on its key, so a redelivery
#: returns the same id), and a database outage retried with backoff.
OPTIONS: dict[str, Any] = {
    "shared": False,
    # The answer is the id (or the refusal): kept when the app has a result backend.
    "ignore_result": False,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "serializer": "json",
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_backoff_max": constants.ENQUEUE_RETRY_BACKOFF_MAX,
    "max_retries": constants.ENQUEUE_MAX_RETRIES,
}


def register(app: Celery, runtime: Callable[[], Runtime], settings: Settings) -> None:
    """Register the enqueue tasks on ``app``; ``runtime`` gives this process's runtime."""
    del settings  # the same signature as the other registrations; nothing to read yet

    @app.task(name=constants.ENQUEUE_TASK, **OPTIONS)
    def enqueue(**fields: Any) -> dict[str, Any]:
        """Enqueue one message; ``{"id": ...}``, or ``{"error": ..., "field": ...}``."""
        return _answered(constants.ENQUEUE_TASK, lambda: {"id": _stored(runtime, [fields])[0]})

    @app.task(name=constants.ENQUEUE_MANY_TASK, **OPTIONS)
    def enqueue_many_task(messages: Any) -> dict[str, Any]:
        """Enqueue many messages, all or none checked first; ``{"ids": [...]}``, or
        ``{"error": ..., "field": ...}``."""

        def stored() -> dict[str, Any]:
            if not isinstance(messages, list):
                raise InvalidInput("messages", messages, "must be a list of messages")
            return {"ids": _stored(runtime, messages)}

        return _answered(constants.ENQUEUE_MANY_TASK, stored)


def _answered(task: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``call``'s answer, or the input error as an answer, logged once at WARNING."""
    try:
        return call()
    except (InvalidInput, IdempotencyConflict) as exc:
        # ``str(exc)`` already shows each value cut to ``SHOWN_CHARACTERS``.
        log.warning("%s refused: %s", task, exc)
        return {"error": str(exc), "field": exc.field}


def _stored(runtime: Callable[[], Runtime], messages: list[Any]) -> list[str]:
    """The ids of ``messages`` (mappings of JSON fields), stored as ``enqueue_many`` does."""
    count = len(messages)
    given = [_from_json(item, index, count) for index, item in enumerate(messages)]
    return enqueue_many(runtime(), given)


def _from_json(item: object, index: int, count: int) -> Any:
    """A message's mapping with its times parsed; anything else is left to validation,
    which names what is wrong."""
    if not isinstance(item, Mapping):
        return item
    where = "" if count == 1 else f"messages[{index}]."
    fields = dict(item)
    for name in _TIMES:
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInput(
                f"{where}{name}", value, "must be an ISO 8601 time with an offset, as text"
            )
        fields[name] = parse_time(value, f"{where}{name}")
    return fields
