"""Putting messages into the outbox: validated, idempotent, committed a part at a time."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from scheduler.constants import ENQUEUE_COMMIT, SQLITE_WRITER_PAUSE_SECONDS
from scheduler.intake.messages import NewMessage, Valid, validated
from scheduler.intake.outbox import Call, store_all
from scheduler.intake.repeats import check_all_stored, check_call, line_numbers
from scheduler.runtime import Runtime, utcnow
from scheduler.store.lines import declared_lines, sync_lines
from scheduler.store.router import NewRecipients

#: ``NewMessage`` is enqueue's argument: importable from here as well.
__all__ = ["NewMessage", "enqueue", "enqueue_many"]


def enqueue_many(
    runtime: Runtime,
    messages: Iterable[NewMessage | Mapping[str, Any]],
    now: datetime | None = None,
) -> list[str]:
    """Enqueue many messages and return their ids, in order.

    Every message is checked before any is stored: a bad message (``InvalidInput``), or
    an idempotency key that a stored message or another message of the call holds with
    other content (``IdempotencyConflict``), and none is stored. A key seen before with
    the same content returns the existing message's id.

    The call is committed ``ENQUEUE_COMMIT`` messages a transaction, so that a big call
    never holds SQLite's one write lock for long (a STOP arriving meanwhile waits for one
    part). A call that fails part way (the database went away, or a check only the
    store can make failed: a chat id another chat holds) has stored the parts before
    the one that failed; with idempotency keys, calling again with the same messages
    returns the stored ones' ids and stores the rest.
    """
    now = now or utcnow()
    given = list(messages)
    items = [validated(item, index, len(given), now) for index, item in enumerate(given)]
    check_call(items)
    call = Call(NewRecipients(runtime.policy, now), {})
    ids: list[str] = []
    sqlite = runtime.engine.dialect.name == "sqlite"
    for start in range(0, len(items), ENQUEUE_COMMIT):
        if start and sqlite:
            # Let a writer waiting for the lock (a STOP) in between two parts.
            time.sleep(SQLITE_WRITER_PAUSE_SECONDS)
        part = items[start : start + ENQUEUE_COMMIT]
        ids += _commit(runtime, part, call, now, everything=items if not start else None)
    return ids


def _commit(
    runtime: Runtime,
    part: Sequence[Valid],
    call: Call,
    now: datetime,
    everything: Sequence[Valid] | None,
) -> list[str]:
    """Store ``part`` in one transaction; with ``everything`` (the first part), check
    the whole call against the store first."""
    policy = runtime.policy
    for attempt in range(2):
        try:
            with runtime.sessions.begin() as session:
                lines = sync_lines(session, policy, now)
                if everything is not None:
                    call.line_numbers.update(line_numbers(session))
                    stored = check_all_stored(session, everything, call.line_numbers)
                    named = {
                        item.line: f"{item.where}line"
                        for item in reversed(everything)
                        if item.line is not None and item.idempotency_key not in stored
                    }
                    declared_lines(lines, named)
                return store_all(session, part, lines, call, policy, now)
        except IntegrityError:
            # A concurrent enqueue stored one of our idempotency keys first; the
            # second pass finds it and returns its id (or refuses other content).
            if attempt:
                raise
    raise AssertionError("unreachable")


def enqueue(runtime: Runtime, message: NewMessage, now: datetime | None = None) -> str:
    return enqueue_many(runtime, [message], now)[0]
