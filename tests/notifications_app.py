"""A separate application's own Celery app, as a team might write it: it knows
healthgate only by task name, and has a callback task of its own, told of each outcome.

Its worker runs in a process of its own (``celery -A tests.notifications_app worker -Q
notifications``); each outcome it is given is pushed, as JSON, to a Redis list the test
reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ.get("NOTIFICATIONS_BROKER", "redis://127.0.0.1:6379/15")
QUEUE = "notifications"
CALLBACK = "notifications.message_outcome"
#: Where the callback keeps what it was given.
TOLD = "notifications:told"

app = Celery("notifications", broker=BROKER, set_as_current=False)
app.conf.task_routes = {CALLBACK: {"queue": QUEUE}}
app.conf.task_ignore_result = True


@app.task(name=CALLBACK)
def message_outcome(outcome: dict[str, Any]) -> None:
    """The application's side: here it would update its order, or page a person."""
    redis.Redis.from_url(BROKER).rpush(TOLD, json.dumps(outcome))
