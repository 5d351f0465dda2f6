"""Putting messages into the outbox: validated, idempotent, committed a part at a time."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import URL, Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from policies.errors import InvalidInput
from scheduler.constants import ENQUEUE_COMMIT, SQLITE_WRITER_PAUSE_SECONDS
from scheduler.intake.messages import NewMessage, Valid, check_categories, validated
from scheduler.intake.outbox import Call, store_all
from scheduler.intake.repeats import check_all_stored, check_call, line_numbers
from scheduler.runtime import Runtime, utcnow
from scheduler.store.lines import declared_lines, sync_lines
from scheduler.store.router import NewRecipients

#: ``NewMessage`` is enqueue's argument: importable from here as well.
__all__ = ["NewMessage", "check_same_database", "enqueue", "enqueue_many"]


def enqueue_many(
    runtime: Runtime,
    messages: Iterable[NewMessage | Mapping[str, Any]],
    now: datetime | None = None,
    *,
    connection: Connection | None = None,
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

    With ``connection`` (see ``check_same_database``) the call is stored in one pass inside the
    caller's transaction, under a savepoint, and nothing is committed: see
    ``_in_savepoint``.
    """
    now = now or utcnow()
    given = list(messages)
    items = [validated(item, index, len(given), now) for index, item in enumerate(given)]
    check_categories(items, runtime.policy)
    check_call(items)
    if connection is not None:
        return _in_savepoint(runtime, connection, items, now)
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
    for attempt in range(2):
        try:
            with runtime.sessions.begin() as session:
                return _store(session, runtime, part, call, now, everything)
        except IntegrityError:
            # A concurrent enqueue stored one of our idempotency keys first; the
            # second pass finds it and returns its id (or refuses other content).
            if attempt:
                raise
    raise AssertionError("unreachable")


def _store(
    session: Session,
    runtime: Runtime,
    part: Sequence[Valid],
    call: Call,
    now: datetime,
    everything: Sequence[Valid] | None,
) -> list[str]:
    """Store ``part`` in ``session``'s transaction, checking ``everything`` first."""
    policy = runtime.policy
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


def _in_savepoint(
    runtime: Runtime, connection: Connection, items: Sequence[Valid], now: datetime
) -> list[str]:
    """Store the whole call inside the caller's transaction, under a SAVEPOINT.

    A refusal found only by the store (a chat id another chat holds) rolls back to the
    savepoint, so the caller's transaction stays usable and its own writes stand; a
    concurrent enqueue that stored one of the keys first (``IntegrityError``) is
    retried once under a new savepoint, which finds it and returns its id. The caller's
    transaction is never committed nor rolled back here.
    """
    if not connection.in_transaction():
        # Like any statement on a connection: the caller's commit (or rollback) ends it.
        connection.begin()
    # SQLAlchemy's recipe for joining an external transaction: the session's commit
    # releases its savepoint, its rollback returns to it; the outer one is untouched.
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        for attempt in range(2):
            try:
                # A new Call each pass: the router's counts of the one rolled back are void.
                call = Call(NewRecipients(runtime.policy, now), {})
                ids = _store(session, runtime, items, call, now, items)
                session.commit()
                return ids
            except IntegrityError:
                session.rollback()
                if attempt:
                    raise
            except BaseException:
                session.rollback()
                raise
    finally:
        session.close()
    raise AssertionError("unreachable")


def check_same_database(runtime: Runtime, field: str, bind: Engine | Connection) -> None:
    """Refuse, naming ``field``, a caller's connection that is not to healthgate's
    database, or is to SQLite (whose write lock healthgate's own engine takes at BEGIN)."""
    ours = runtime.engine.url
    theirs = bind.engine.url
    shown = theirs.render_as_string(hide_password=True)
    if ours.get_backend_name() != "postgresql" or theirs.get_backend_name() != "postgresql":
        raise InvalidInput(
            field, shown, "enqueueing in your own transaction needs PostgreSQL on both sides"
        )
    if _place(ours) != _place(theirs):
        raise InvalidInput(
            field,
            shown,
            "is not healthgate's database "
            f"({ours.render_as_string(hide_password=True)}): "
            "the host, port and database name must be the same",
        )


def _place(url: URL) -> tuple[str | None, int, str | None]:
    """Where a PostgreSQL URL points: host, port (5432 when not given) and database."""
    return url.host, url.port or 5432, url.database


def enqueue(runtime: Runtime, message: NewMessage, now: datetime | None = None) -> str:
    return enqueue_many(runtime, [message], now)[0]
