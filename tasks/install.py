"""healthgate's tasks on the application's own Celery app: ``tasks.install(app)``.

Each of healthgate's tasks gets its reliability options on its own, by name (Celery's
``task_annotations`` and ``task_routes``), so the application's other tasks keep
theirs: nothing global such as ``task_acks_late`` is changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from policies.errors import HealthgateError, shown
from scheduler import constants
from scheduler.settings import Settings
from tasks.application import beat_schedule, register_all

#: Every task healthgate registers, by its wire name.
TASK_NAMES = (
    constants.TICK_TASK,
    constants.DISPATCH_TASK,
    constants.POLL_TASK,
    constants.PURGE_TASK,
    constants.ENQUEUE_TASK,
    constants.ENQUEUE_MANY_TASK,
    constants.OUTCOMES_TASK,
)

#: What each of them runs with: acknowledged after it ran, handed back if its worker dies
#: (a claim's fence token and the idempotency keys make a redelivery harmless), on
#: with JSON arguments; the queue is a route (Celery deprecates the task attribute).
TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "serializer": "json",
}


def install(app: Celery, settings: Settings | None = None) -> None:
    """Register healthgate's tasks and beat entries on ``app``, the application's own
    Celery app; ``celery -A myapp worker -Q healthgate`` then runs healthgate's work.

    ``settings`` default to the environment's (``HEALTHGATE_*``). Refused, with a
    ``HealthgateError`` naming the setting, are configurations healthgate cannot run on:

    - ``task_always_eager``: every task would run inside its caller. Beat's tick would
      gate and send in the beat process, and each full batch would claim and send the
      next one inside it; nothing is acknowledged late or handed back when a process
      dies, so the delivery promises of healthgate's tasks do not hold.
    - ``accept_content`` without ``json``: healthgate's tasks travel as JSON, and a
      worker refusing it would drop every one of them.

    Left to the application: the broker (``memory://`` works only when beat, the
    worker and the senders share one process, as in tests), and
    ``worker_prefetch_multiplier``, which is global: run healthgate's queue in a worker
    of its own with ``--prefetch-multiplier=1`` so a batch never waits behind another.
    """
    _check(app)
    settings = settings or Settings()
    conf = app.conf
    names = dict.fromkeys(TASK_NAMES, TASK_OPTIONS)
    # Ours first: an application's catch-all route or annotation must not reach them.
    conf.task_annotations = (names, *_routers(conf.task_annotations))
    queue = {name: {"queue": constants.DEFAULT_QUEUE} for name in TASK_NAMES}
    conf.task_routes = (queue, *_routers(conf.task_routes))
    register_all(app, settings)
    schedule = beat_schedule(settings)
    for entry in schedule.values():
        entry["options"] = {**entry["options"], "queue": constants.DEFAULT_QUEUE}
    conf.beat_schedule = {**(conf.beat_schedule or {}), **schedule}


def _check(app: Celery) -> None:
    conf = app.conf
    if conf.task_always_eager:
        raise HealthgateError(
            f"task_always_eager={shown(conf.task_always_eager)}: healthgate's tasks must run "
            "in a worker, acknowledged after they ran; turn it off to install them"
        )
    accepted = conf.accept_content
    if accepted is not None and "json" not in accepted and "application/json" not in accepted:
        raise HealthgateError(
            f"accept_content={shown(accepted)}: healthgate's tasks travel as JSON; "
            "add 'json' so the worker takes them"
        )


def _routers(value: object) -> Sequence[Any]:
    """A ``task_routes`` or ``task_annotations`` setting as a sequence of its parts."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)
