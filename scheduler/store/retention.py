"""Retention: what people wrote is kept for a while, then purged; why stays for ever.

A finished message's body and a webhook event's body (which holds what the recipient
wrote) are emptied once older than the retention period, and the row marked with
``purged_at``. A message keeps its id, recipient, line, state, times, body digest
(which the content rule counts) and every decision; an event keeps its id, type,
outcome and times. A rejected event's detail quotes the refused value, so it goes too.

The purge runs in bounded batches, each its own short transaction, so it never holds
the writer lock (SQLite) or many row locks (PostgreSQL) for long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import CursorResult, Select, Update, case, delete, null, select, update
from sqlalchemy.orm import Session, sessionmaker

from scheduler import constants
from scheduler.store import outcomes
from scheduler.store.models import FINAL_STATES, Message, WebhookEvent, WorkerSeen


class Purged(NamedTuple):
    """How many rows one purge emptied."""

    messages: int
    webhook_events: int
    #: Worker processes not seen since before the cut-off: gone (``healthgate workers``).
    workers: int = 0
    #: Outcomes told to the application's callback (or given up on) before the cut-off.
    outcomes: int = 0


def purge(
    sessions: sessionmaker[Session],
    before: datetime,
    now: datetime,
    batch: int = constants.PURGE_BATCH,
) -> Purged:
    """Empty the bodies of messages finished before ``before`` and of webhook events
    received before it; ``now`` is stamped as ``purged_at``. Outcomes of messages
    finished before it are forgotten once told to the application, or at once when no
    worker delivers outcomes."""
    finished = (
        Message.purged_at.is_(None),
        Message.state.in_([state.value for state in FINAL_STATES]),
        Message.updated_at < before,
    )
    messages = _in_batches(
        sessions,
        select(Message.id).where(*finished).order_by(Message.updated_at),
        lambda ids: (
            update(Message).where(Message.id.in_(ids), *finished).values(body="", purged_at=now)
        ),
        batch,
    )
    received = (WebhookEvent.purged_at.is_(None), WebhookEvent.received_at < before)
    rejected = WebhookEvent.outcome == "rejected"
    events = _in_batches(
        sessions,
        select(WebhookEvent.id).where(*received).order_by(WebhookEvent.received_at),
        lambda ids: (
            update(WebhookEvent)
            .where(WebhookEvent.id.in_(ids), *received)
            .values(
                payload="",
                purged_at=now,
                detail=case((rejected, null()), else_=WebhookEvent.detail),
            )
        ),
        batch,
    )
    with sessions.begin() as session:
        gone = cast(
            CursorResult[Any],
            session.execute(delete(WorkerSeen).where(WorkerSeen.last_seen < before)),
        )
        told = outcomes.purge(session, before, now)
    return Purged(messages, events, gone.rowcount, told)


def _in_batches(
    sessions: sessionmaker[Session],
    pick: Select[str],
    empty: Callable[[Sequence[str]], Update],
    batch: int,
) -> int:
    """Run ``empty`` over ``pick``'s ids, ``batch`` at a time, one transaction each.

    Rows another transaction holds are skipped (PostgreSQL ``SKIP LOCKED``) and left
    to the next purge; the update checks the conditions again, so a row that changed
    meanwhile is left alone.
    """
    total = 0
    while True:
        with sessions.begin() as session:
            ids: Sequence[str] = session.scalars(
                pick.limit(batch).with_for_update(skip_locked=True)
            ).all()
            if ids:
                result = cast(
                    CursorResult[Any],
                    session.execute(empty(ids), execution_options={"synchronize_session": False}),
                )
                total += result.rowcount
        if len(ids) < batch:
            return total
