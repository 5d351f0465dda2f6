"""Loading line usage for the gate from the store (the embedded and default limiter)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.usage import DAY, HOUR, MINUTE, LineUsage
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
    _load_windows(session, usage, ids, now)
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


def _load_windows(
    session: Session, usage: dict[int, LineUsage], ids: list[int], now: datetime
) -> None:
    """The last minute's sends and the last hour's recipients and bodies of each line.

    Each send of the last minute (the per-minute caps), and per recipient and per body
    only the last send of the hour (distinct recipients, the same-body rule): the rows
    read grow with recipients, not with sends.
    """
    minute: dict[tuple[int, str], list[datetime]] = {}
    recent = session.execute(
        select(Message.line_id, Message.recipient, Message.dispatched_at)
        .where(Message.line_id.in_(ids), Message.dispatched_at > now - MINUTE)
        .order_by(Message.dispatched_at)
    )
    for line_id, recipient, at in recent:
        if line_id is None or at is None:
            continue
        usage[line_id].recent.append(at)
        minute.setdefault((line_id, recipient), []).append(at)
    last = func.max(Message.dispatched_at)
    hour = Message.line_id.in_(ids), Message.dispatched_at > now - HOUR
    recipients = session.execute(
        select(Message.line_id, Message.recipient, last)
        .where(*hour)
        .group_by(Message.line_id, Message.recipient)
    )
    for line_id, recipient, at in recipients:
        if line_id is not None and at is not None:
            usage[line_id].by_recipient[recipient] = minute.get((line_id, recipient)) or [at]
    bodies = session.execute(
        select(Message.line_id, Message.body_hash, Message.recipient, last)
        .where(*hour, Message.body_hash.is_not(None))
        .group_by(Message.line_id, Message.body_hash, Message.recipient)
    )
    for line_id, body_hash, recipient, at in bodies:
        if line_id is not None and body_hash is not None and at is not None:
            usage[line_id].by_body.setdefault(body_hash, {})[recipient] = at
