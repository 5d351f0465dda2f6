"""What ``/metrics`` reads from the store at each scrape: the queue, lines and chats.

Each read goes through an index of the few rows it counts (open messages, chats not
HEALTHY, the due end of the waiting queue) or through the lines table, which holds only
the lines the policy declares: a scrape costs the same with a million finished messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session

from scheduler.store.models import (
    OPEN_SQL,
    UNDELIVERED_SQL,
    UNHEALTHY_CHAT_SQL,
    WAITING_SQL,
    Chat,
    Line,
    Message,
    Outcome,
)


class Levels(NamedTuple):
    """The store's levels at one moment, by line number (``""`` for no line yet)."""

    #: Messages not finished: ``(state, line) -> count``.
    queue: dict[tuple[str, str], int]
    #: Lines: ``(reputation, status) -> count``.
    lines: dict[tuple[str, str], int]
    #: Chats not HEALTHY: ``(health, line) -> count``; an opt-out shows as ``OPTED_OUT``.
    chats: dict[tuple[str, str], int]
    #: Seconds since the message due longest became due (0 when none is due).
    oldest_due_seconds: float
    #: Outcomes not yet told to the application, and the age of the oldest (0: none).
    outcomes_undelivered: int = 0
    oldest_outcome_seconds: float = 0.0


def levels(session: Session, now: datetime) -> Levels:
    """Read the levels: four short queries, each over an index or the lines table."""
    numbers: dict[int | None, str] = {None: ""}
    lines: dict[tuple[str, str], int] = {}
    for line_id, number, reputation, status in session.execute(
        select(Line.id, Line.number, Line.reputation, Line.status)
    ):
        numbers[line_id] = number
        lines[(reputation, status)] = lines.get((reputation, status), 0) + 1
    queue = {
        (state, numbers.get(line_id, "")): n
        for state, line_id, n in session.execute(
            select(Message.state, Message.line_id, func.count())
            .where(text(OPEN_SQL))
            .group_by(Message.state, Message.line_id)
        )
    }
    health = case((Chat.opted_out_at.is_not(None), "OPTED_OUT"), else_=Chat.health)
    chats: dict[tuple[str, str], int] = {}
    for bucket, line_id, n in session.execute(
        select(health, Chat.line_id, func.count())
        .where(text(UNHEALTHY_CHAT_SQL))
        .group_by(health, Chat.line_id)
    ):
        key = (str(bucket), numbers.get(line_id, ""))
        chats[key] = chats.get(key, 0) + n
    # The first entry of the claim's own index of waiting messages by due time.
    oldest = session.scalar(
        select(func.min(Message.not_before)).where(text(WAITING_SQL), Message.not_before <= now)
    )
    waited = (now - oldest).total_seconds() if oldest is not None else 0.0
    # Over the outbox's own partial index of what is undelivered.
    told, first = session.execute(
        select(func.count(), func.min(Outcome.next_attempt_at)).where(text(UNDELIVERED_SQL))
    ).one()
    since = (now - first).total_seconds() if first is not None else 0.0
    return Levels(queue, lines, chats, max(0.0, waited), told, max(0.0, since))
