"""What the worker and beat log: a line for each task that did something, and nothing
for the many that did not.

Celery logs every task twice at INFO ("received", "succeeded"), and beat logs every
task it sends: with a tick every two seconds that is four lines every two seconds
saying nothing happened. Outside ``--loglevel=DEBUG`` those lines are left out, and each
of healthgate's tasks logs one INFO line of its own when it claimed, sent, changed or
purged something. A task that fails is still logged, at ERROR, by Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: Celery's per-task INFO lines: the worker's "received" and "succeeded in".
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
#: Alembic's "Context impl SQLiteImpl." on every worker process that checks the schema.
_SCHEMA_LOGGER = "alembic"
#: httpx's "HTTP Request: POST <url>" for every call: the whole URL, where a webhook's
#: path or query may hold a token.
_HTTP_LOGGERS = ("httpx", "httpcore")
#: Beat's "Scheduler: Sending due task ...", logged once for every task it sends.
_BEAT_LOGGER = "celery.beat"
_BEAT_SENDING = "Scheduler: Sending due task"


def summary(counts: Mapping[str, int]) -> str:
    """``resent 1, sent 3``: the counts that are not zero, by name; empty when none is."""
    return ", ".join(f"{name.lower()} {n}" for name, n in sorted(counts.items()) if n)


class _NotSending(logging.Filter):
    """Leaves out beat's line for each task it sends."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith(_BEAT_SENDING))


_NOT_SENDING = _NotSending()


def quiet(loglevel: int | str | None = None, **_: Any) -> None:
    """Leave out Celery's and Alembic's lines for each task (Celery's ``after_setup_logger``
    signal); at ``--loglevel=DEBUG`` everything is kept."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level <= logging.DEBUG:
        return
    for name in (*_PER_TASK_LOGGERS, _SCHEMA_LOGGER, *_HTTP_LOGGERS):
        logging.getLogger(name).setLevel(logging.WARNING)
    beat = logging.getLogger(_BEAT_LOGGER)
    if _NOT_SENDING not in beat.filters:
        beat.addFilter(_NOT_SENDING)
