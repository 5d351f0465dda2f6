"""Where each rate rule's queue of held messages ends, so a new hold joins its end.

A message a cap throttles waits for its turn, not for the moment the cap first allows
one more send: held messages on the same queue (a line, or one recipient on it, at one
priority) are spaced at the cap's pace. The scheduler reads the latest time already
given on each queue it adds to, once a batch, from an index of throttled messages.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Select, func, literal, select, union_all
from sqlalchemy.orm import Session

from scheduler.store.models import Message, MessageState

#: Queues read in one statement at most (each is one index lookup).
_CHUNK = 200


class QueueKey(NamedTuple):
    """One queue: the held messages of one rule on one line, or on one chat of it."""

    code: str
    line_id: int
    #: None for a line's queue.
    chat_id: int | None
    #: Each priority has its own queue: a transactional message never joins the end of
    #: a marketing backlog (the claim takes the higher priority first when both are due).
    priority: int = 0


def queue_ends(session: Session, keys: Collection[QueueKey]) -> dict[QueueKey, datetime]:
    """The latest ``not_before`` of the throttled messages on each queue that has any.

    One statement per ``_CHUNK`` queues, each queue a lookup of the end of an
    ``ix_messages_throttled_*`` index, so the read does not grow with the backlog.
    """
    ordered = sorted(keys, key=lambda k: (k.code, k.line_id, k.chat_id or 0, k.priority))
    ends: dict[QueueKey, datetime] = {}
    for start in range(0, len(ordered), _CHUNK):
        part = ordered[start : start + _CHUNK]
        rows = session.execute(union_all(*(_end(i, key) for i, key in enumerate(part))))
        ends.update((part[i], end) for i, end in rows if end is not None)
    return ends


def _end(number: int, key: QueueKey) -> Select[int, datetime | None]:
    where = (
        Message.chat_id == key.chat_id
        if key.chat_id is not None
        else Message.line_id == key.line_id
    )
    return select(literal(number), func.max(Message.not_before)).where(
        Message.state == MessageState.THROTTLED.value,
        Message.last_code == key.code,
        Message.priority == key.priority,
        where,
    )
