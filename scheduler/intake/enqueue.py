"""Putting messages into the outbox: validated, idempotent, one transaction per call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from scheduler.intake.messages import NewMessage
from scheduler.intake.outbox import store_all
from scheduler.runtime import Runtime, utcnow
from scheduler.store.lines import sync_lines

#: ``NewMessage`` is enqueue's argument: importable from here as well.
__all__ = ["NewMessage", "enqueue", "enqueue_many"]


def enqueue_many(
    runtime: Runtime,
    messages: Iterable[NewMessage | Mapping[str, Any]],
    now: datetime | None = None,
) -> list[str]:
    """Enqueue many messages in one transaction and return their ids, in order.

    One bad message and none is stored. A key seen before returns the existing
    message's id.
    """
    now = now or utcnow()
    given = list(messages)
    policy = runtime.policy
    for attempt in range(2):
        try:
            with runtime.sessions.begin() as session:
                lines = sync_lines(session, policy, now)
                return store_all(session, given, lines, policy, now)
        except IntegrityError:
            # A concurrent enqueue stored one of our idempotency keys first; the
            # second pass finds it and returns its id.
            if attempt:
                raise
    raise AssertionError("unreachable")


def enqueue(runtime: Runtime, message: NewMessage, now: datetime | None = None) -> str:
    return enqueue_many(runtime, [message], now)[0]
