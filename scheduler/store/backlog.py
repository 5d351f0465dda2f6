"""Why each line's messages wait and when they go: its caps in use, its queue by state and
reason, its oldest waiting message, and when what is due should be out.

Every read is a grouped count over an index: the line's sends of the last day
(``ix_messages_line_dispatched``), its chats started that day, and its waiting messages
(``ix_messages_waiting_line``, which carries the times counted), so a status costs the
same with a thousand waiting messages as with a million.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, distinct, func, select, text
from sqlalchemy.orm import Session

from policies.config import Policy
from policies.gate import limits_for
from policies.pace import CAP_WINDOWS, Limits
from policies.statuses import Action
from policies.usage import DAY, HOUR, MINUTE
from scheduler.store.lines import line_facts
from scheduler.store.models import (
    WAITING_SQL,
    WAITING_STATES,
    Chat,
    DecisionRecord,
    Line,
    Message,
)
from scheduler.store.usage import OURS

QUEUED, THROTTLED, DEFERRED = (state.value for state in WAITING_STATES)
#: The key of a waiting message with no reason yet (enqueued, never looked at).
NO_REASON = "enqueued"
#: Buckets of the activity chart: the last 24 h, an hour each.
CHART_HOURS = 24


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Oldest(NamedTuple):
    """The first message of a line's oldest group of waiting messages."""

    created_at: datetime
    state: str
    code: str | None


@dataclass(slots=True)
class Queue:
    """A line's waiting messages, counted from the index."""

    by_state: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    #: Queued messages whose time has come (not sent yet: never looked at, or released).
    due: int = 0
    #: The latest ``not_before`` given to a throttled message: when the last is expected.
    last_turn: datetime | None = None
    #: The oldest group's first message.
    oldest: Oldest | None = None


def _queues(session: Session, now: datetime) -> dict[int | None, Queue]:
    """Every line's waiting messages by state and reason (None: no line yet)."""
    rows = session.execute(
        select(
            Message.line_id,
            Message.state,
            Message.last_code,
            func.count(),
            func.min(Message.created_at),
            func.max(Message.not_before),
            func.count().filter(Message.not_before <= now),
        )
        .where(text(WAITING_SQL))
        .group_by(Message.line_id, Message.state, Message.last_code)
    )
    queues: dict[int | None, Queue] = {}
    for line_id, state, code, count, first, last, due in rows:
        queue = queues.setdefault(line_id, Queue())
        queue.by_state[state] = queue.by_state.get(state, 0) + count
        reason = code or NO_REASON
        queue.by_reason[reason] = queue.by_reason.get(reason, 0) + count
        if state == QUEUED:
            queue.due += due
        if state == THROTTLED and last is not None:
            queue.last_turn = last if queue.last_turn is None else max(queue.last_turn, last)
        if first is not None and (queue.oldest is None or first < queue.oldest[0]):
            queue.oldest = Oldest(first, state, code)
    return queues


def _oldest(session: Session, line_id: int | None, queue: Queue) -> dict[str, Any] | None:
    """The oldest waiting message of a line: one lookup in the index, by its group."""
    if queue.oldest is None:
        return None
    oldest = queue.oldest
    found = session.scalar(
        select(Message.id)
        .where(
            # The partial index's own condition, as literals, so the database may use it.
            text(WAITING_SQL),
            Message.line_id.is_(None) if line_id is None else Message.line_id == line_id,
            Message.state == oldest.state,
            Message.last_code.is_(None)
            if oldest.code is None
            else Message.last_code == oldest.code,
            Message.created_at == oldest.created_at,
        )
        .limit(1)
    )
    return {
        "id": found,
        "since": _iso(oldest.created_at),
        "state": oldest.state,
        "reason": oldest.code or NO_REASON,
    }


def _used(session: Session, ids: list[int], now: datetime) -> dict[int, dict[str, int]]:
    """How much of each cap's window every line has used at ``now``."""
    used: dict[int, dict[str, int]] = {line_id: dict.fromkeys(CAP_WINDOWS, 0) for line_id in ids}
    if not ids:
        return used
    sent = Message.dispatched_at.is_not(None)
    for line_id, minute, day, hour in session.execute(
        select(
            Message.line_id,
            func.count().filter(Message.dispatched_at > now - MINUTE),
            func.count(),
            func.count(distinct(Message.recipient)).filter(Message.dispatched_at > now - HOUR),
        )
        .where(sent, Message.line_id.in_(ids), Message.dispatched_at > now - DAY)
        .group_by(Message.line_id)
    ):
        if line_id is not None:  # never: only sent messages count, and each had a line
            used[line_id].update(
                sends_per_minute=minute, sends_per_day=day, distinct_recipients_per_hour=hour
            )
    # The per-recipient caps: the busiest recipient's use of its window.
    per_chat = (
        select(
            Message.line_id.label("line_id"),
            func.count().filter(Message.dispatched_at > now - MINUTE).label("minute"),
            func.count().label("day"),
        )
        .where(sent, Message.line_id.in_(ids), Message.dispatched_at > now - DAY)
        .group_by(Message.line_id, Message.chat_id)
        .subquery()
    )
    for line_id, minute, day in session.execute(
        select(per_chat.c.line_id, func.max(per_chat.c.minute), func.max(per_chat.c.day)).group_by(
            per_chat.c.line_id
        )
    ):
        used[line_id].update(
            sends_per_recipient_per_minute=minute or 0, sends_per_recipient_per_day=day or 0
        )
    for line_id, started in session.execute(
        select(Chat.line_id, func.count())
        .where(Chat.line_id.in_(ids), Chat.first_sent_at > now - DAY, OURS)
        .group_by(Chat.line_id)
    ):
        used[line_id]["new_conversations_per_day"] = started
    return used


def _caps(limits: Limits, used: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "limit": getattr(limits, name),
            "used": used[name],
            "window_seconds": int(window.total_seconds()),
            # ``recipient``: counted per recipient; ``used`` is the busiest one's.
            "per": queue.value,
        }
        for name, (window, queue) in CAP_WINDOWS.items()
    ]


def spacing(limits: Limits) -> timedelta:
    """The time between two sends to new recipients at these caps: the slowest line cap."""
    return max(
        MINUTE / limits.sends_per_minute,
        DAY / limits.sends_per_day,
        HOUR / limits.distinct_recipients_per_hour,
        DAY / limits.new_conversations_per_day,
    )


def estimate(queue: Queue, limits: Limits, now: datetime) -> dict[str, Any]:
    """When what is due on a line should be out, at its caps as they apply now.

    Throttled messages already hold their turn (``not_before``): the last of them goes at
    the latest. Queued messages due but not yet looked at join after it, one every
    :func:`spacing` (as for new recipients, so an upper bound for known ones). Deferred
    messages wait for health to recover, which no cap tells: they are not counted.
    """
    due = queue.due + queue.by_state.get(THROTTLED, 0)
    if not due:
        return {"due": 0, "drains_at": None, "seconds": 0}
    start = max(now, queue.last_turn or now)
    end = start + spacing(limits) * queue.due
    return {"due": due, "drains_at": _iso(end), "seconds": int((end - now).total_seconds())}


def lines(
    session: Session, rows: Iterable[Line], policy: Policy, now: datetime
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per line, its caps in use, queue, oldest waiting message and estimate; and the
    waiting messages of every line together (by state, by reason, without a line)."""
    rows = list(rows)
    queues = _queues(session, now)
    used = _used(session, [line.id for line in rows], now)
    found = []
    for line in rows:
        limits = limits_for(line_facts(line), policy, now)
        queue = queues.get(line.id, Queue())
        found.append(
            {
                "pace": limits.note.strip().strip("()"),
                "caps": _caps(limits, used[line.id]),
                "waiting": queue.by_state,
                "waiting_by_reason": queue.by_reason,
                "oldest_waiting": _oldest(session, line.id, queue),
                "estimate": estimate(queue, limits, now),
            }
        )
    totals: dict[str, Any] = {"by_state": {}, "by_reason": {}, "without_line": 0}
    for line_id, queue in queues.items():
        if line_id is None:
            totals["without_line"] = sum(queue.by_state.values())
        for key, counts in (("by_state", queue.by_state), ("by_reason", queue.by_reason)):
            for name, count in counts.items():
                totals[key][name] = totals[key].get(name, 0) + count
    totals["oldest"] = _oldest_of(session, queues)
    return found, totals


def _oldest_of(session: Session, queues: dict[int | None, Queue]) -> dict[str, Any] | None:
    held = [(q.oldest[0], line_id, q) for line_id, q in queues.items() if q.oldest is not None]
    if not held:
        return None
    _, line_id, queue = min(held, key=lambda item: item[0])
    return _oldest(session, line_id, queue)


def duration(seconds: int | None) -> str:
    """``4 d 20 h``, ``35 min``, ``12 s``: the two largest units of a wait."""
    if seconds is None:
        return "-"
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
    return " ".join(parts[:2])


def activity(session: Session, now: datetime) -> list[dict[str, Any]]:
    """Sends and holds (THROTTLE and DEFER decisions first taken) in each of the last 24
    hours, oldest first; each hour ends at ``now`` minus a whole number of hours."""
    starts = [now - HOUR * (CHART_HOURS - i) for i in range(CHART_HOURS)]

    def buckets(column: Any) -> list[Any]:
        return [func.count().filter(and_(column > s, column <= s + HOUR)) for s in starts]

    sends = session.execute(
        select(*buckets(Message.dispatched_at)).where(
            Message.dispatched_at.is_not(None), Message.dispatched_at > starts[0]
        )
    ).one()
    holds = session.execute(
        select(*buckets(DecisionRecord.at)).where(
            DecisionRecord.at > starts[0],
            DecisionRecord.action.in_([Action.THROTTLE.value, Action.DEFER.value]),
        )
    ).one()
    return [
        {"end": _iso(start + HOUR), "sends": sends[i] or 0, "holds": holds[i] or 0}
        for i, start in enumerate(starts)
    ]


def recent_decisions(session: Session, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` decisions recorded, newest first."""
    rows = session.scalars(select(DecisionRecord).order_by(DecisionRecord.id.desc()).limit(limit))
    return [
        {
            "message_id": row.message_id,
            "at": _iso(row.last_at or row.at),
            "action": row.action,
            "code": row.code,
            "reason": row.reason,
            "line": row.line,
            "not_before": _iso(row.not_before),
            "repeats": row.repeats,
        }
        for row in rows
    ]
