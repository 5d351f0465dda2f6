"""Loading line usage for the gate from the store (the embedded and default limiter)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.usage import DAY, HOUR, LineUsage
from scheduler.models import Chat, Line, Message


def load_usage(
    session: Session,
    lines: Collection[Line],
    day_limits: Mapping[int, int],
    now: datetime,
    headroom: int,
) -> dict[int, LineUsage]:
    """Usage of ``lines``, counted from dispatched messages.

    The day's times are loaded only for lines within ``headroom`` sends of their daily
    cap (``day_limits`` by line id, as it applies now); the rest need just the count.
    """
    ids = [line.id for line in lines]
    usage = {line_id: LineUsage() for line_id in ids}
    if not ids:
        return usage
    recent = session.execute(
        select(Message.line_id, Message.recipient, Message.dispatched_at, Message.body_hash)
        .where(Message.line_id.in_(ids), Message.dispatched_at > now - HOUR)
        .order_by(Message.dispatched_at)
    )
    for line_id, recipient, at, body_hash in recent:
        if line_id is None or at is None:
            continue
        entry = usage[line_id]
        entry.recent.append(at)
        entry.by_recipient.setdefault(recipient, []).append(at)
        if body_hash is not None:
            entry.by_body.setdefault(body_hash, {})[recipient] = at
    counts = session.execute(
        select(Message.line_id, func.count())
        .where(Message.line_id.in_(ids), Message.dispatched_at > now - DAY)
        .group_by(Message.line_id)
    )
    for line_id, count in counts:
        if line_id is not None:
            usage[line_id].day_count = count
    for line in lines:
        entry = usage[line.id]
        if entry.day_count + headroom >= day_limits[line.id]:
            entry.day = list(
                session.scalars(
                    select(Message.dispatched_at)
                    .where(Message.line_id == line.id, Message.dispatched_at > now - DAY)
                    .order_by(Message.dispatched_at)
                ).all()  # type: ignore[arg-type]
            )
    new_chats = session.execute(
        select(Chat.line_id, Chat.first_sent_at)
        .where(Chat.line_id.in_(ids), Chat.first_sent_at > now - DAY)
        .order_by(Chat.first_sent_at)
    )
    for line_id, first in new_chats:
        if first is not None:
            usage[line_id].new_chats.append(first)
    return usage
