"""Loading line usage for the gate from the store (the embedded and default limiter)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, distinct, func, or_, select
from sqlalchemy.orm import Session

from policies.pace import Limits
from policies.usage import DAY, HOUR, MINUTE, LineUsage
from scheduler.store.models import Chat, Line, Message

#: Conversations the line started: a chat the recipient opened is not a new one.
OURS = or_(Chat.first_inbound_at.is_(None), Chat.first_inbound_at > Chat.first_sent_at)


def load_usage(
    session: Session,
    lines: Collection[Line],
    limits: Mapping[int, Limits],
    now: datetime,
    headroom: int,
    recipients: Collection[str] = (),
    digests: Collection[str] = (),
    body_limit: int = 0,
) -> dict[int, LineUsage]:
    """Usage of ``lines`` at ``now``, counted from dispatched messages, for deciding on up
    to ``headroom`` more sends to ``recipients`` (with ``digests`` of bodies, against at
    most ``body_limit`` recipients of a body an hour).

    Each window is read as a count, and its times only when the line is within
    ``headroom`` sends of that cap (``limits`` by line id, as they apply now): the rows a
    batch reads grow with the batch, not with what the line sent.
    """
    usage = _load_windows(session, lines, limits, now, headroom, recipients, digests)
    if digests:
        load_bodies(session, usage, digests, now, headroom, body_limit)
    return usage


def _load_windows(
    session: Session,
    lines: Collection[Line],
    limits: Mapping[int, Limits],
    now: datetime,
    headroom: int,
    recipients: Collection[str],
    digests: Collection[str],
) -> dict[int, LineUsage]:
    """The caps' windows of :func:`load_usage`, and when ``digests`` reached
    ``recipients`` in the last hour."""
    ids = [line.id for line in lines]
    usage = {line_id: LineUsage() for line_id in ids}
    if not ids:
        return usage

    def near(count: int, limit: int) -> bool:
        return count + headroom >= limit

    # One pass over the day's sends counts the minute, the day and the hour's recipients.
    minute: dict[int, int] = {}
    day: dict[int, int] = {}
    reached: dict[int, int] = {}
    counted = session.execute(
        select(
            Message.line_id,
            func.count().filter(Message.dispatched_at > now - MINUTE),
            func.count(),
            func.count(distinct(Message.recipient)).filter(Message.dispatched_at > now - HOUR),
        )
        .where(Message.line_id.in_(ids), Message.dispatched_at > now - DAY)
        .group_by(Message.line_id)
    )
    for line_id, last_minute, last_day, last_hour in counted:
        if line_id is not None:
            minute[line_id], day[line_id], reached[line_id] = last_minute, last_day, last_hour
    started = session.execute(
        select(Chat.line_id, func.count())
        .where(Chat.line_id.in_(ids), Chat.first_sent_at > now - DAY, OURS)
        .group_by(Chat.line_id)
    )
    fresh = {line_id: count for line_id, count in started}
    for line_id in ids:
        entry, caps = usage[line_id], limits[line_id]
        entry.day_count = day.get(line_id, 0)
        if near(minute.get(line_id, 0), caps.sends_per_minute):
            entry.recent = _times(
                session, Message.dispatched_at, Message.line_id == line_id, now - MINUTE
            )
        else:
            entry.recent_unloaded = minute.get(line_id, 0)
        if near(entry.day_count, caps.sends_per_day):
            entry.day = _times(
                session, Message.dispatched_at, Message.line_id == line_id, now - DAY
            )
        if near(fresh.get(line_id, 0), caps.new_conversations_per_day):
            entry.new_chats = _times(
                session, Chat.first_sent_at, and_(Chat.line_id == line_id, OURS), now - DAY
            )
        else:
            entry.new_chats_unloaded = fresh.get(line_id, 0)
        if near(reached.get(line_id, 0), caps.distinct_recipients_per_hour):
            last = _last_sends(session, now, Message.line_id == line_id)
            entry.by_recipient = {recipient: [at] for recipient, at in last.items()}
    chats = _chats(session, ids, recipients)
    _load_recipients(session, usage, chats, digests, now)
    _load_recipient_days(session, usage, chats, limits, now, headroom)
    for line_id in ids:
        entry = usage[line_id]
        # Read apart, the two may differ by what committed between them.
        entry.recipients_unloaded = max(0, reached.get(line_id, 0) - len(entry.by_recipient))
    return usage


def _times(
    session: Session, column: Any, where: ColumnElement[bool], since: datetime
) -> list[datetime]:
    """The times in ``column`` after ``since``, oldest first."""
    return list(session.scalars(select(column).where(where, column > since).order_by(column)).all())


def _last_sends(
    session: Session, now: datetime, *where: ColumnElement[bool]
) -> dict[str, datetime]:
    """Each recipient the sends ``where`` selects reached in the last hour, with the time
    of the last."""
    rows = session.execute(
        select(Message.recipient, func.max(Message.dispatched_at))
        .where(*where, Message.dispatched_at > now - HOUR)
        .group_by(Message.recipient)
    )
    return {recipient: at for recipient, at in rows if at is not None}


def _chats(session: Session, ids: list[int], recipients: Collection[str]) -> list[int]:
    """The chats of ``recipients`` on the lines ``ids``.

    Read first, so their messages are then read by a list of ids: as one statement, the
    planner may read the whole window's sends instead of the chats' own.
    """
    if not recipients or not ids:
        return []
    return list(
        session.scalars(
            select(Chat.id).where(Chat.recipient.in_(set(recipients)), Chat.line_id.in_(ids))
        ).all()
    )


def _load_recipients(
    session: Session,
    usage: dict[int, LineUsage],
    chats: Collection[int],
    digests: Collection[str],
    now: datetime,
    bodies_only: bool = False,
) -> None:
    """The last hour's sends on ``chats``: each send of the last minute (the
    per-recipient cap), else the last one (distinct recipients); and the last time each
    of ``digests`` reached each recipient (the same-body rule)."""
    if not chats:
        return
    rows = session.execute(
        select(Message.line_id, Message.recipient, Message.body_hash, Message.dispatched_at)
        .where(Message.chat_id.in_(chats), Message.dispatched_at > now - HOUR)
        .order_by(Message.dispatched_at)
    )
    minute_start = now - MINUTE
    wanted = set(digests)
    found: dict[tuple[int, str], list[datetime]] = {}
    for line_id, recipient, body_hash, at in rows:
        if line_id is None or at is None:
            continue
        times = found.setdefault((line_id, recipient), [])
        # Oldest first: each send of the last minute, after the last one before it.
        if at > minute_start:
            times.append(at)
        else:
            times[:] = [at]
        if body_hash in wanted:
            usage[line_id].by_body.setdefault(body_hash, {})[recipient] = at
    if bodies_only:
        return
    for (line_id, recipient), times in found.items():
        usage[line_id].by_recipient[recipient] = times


def _load_recipient_days(
    session: Session,
    usage: dict[int, LineUsage],
    chats: Collection[int],
    limits: Mapping[int, Limits],
    now: datetime,
    headroom: int,
) -> None:
    """The last day's sends on ``chats``, per line and recipient: a count, and the times
    where the count is within ``headroom`` of the per-recipient daily cap.

    Two statements at most, whatever the batch: the counts, then the times of every
    recipient near the cap at once (one, the times, when the batch alone could reach
    the cap). Both are range reads of ``ix_messages_chat_dispatched``.
    """
    if not chats:
        return
    day = Message.dispatched_at > now - DAY
    if all(headroom >= limits[line].sends_per_recipient_per_day for line in usage):
        # Every recipient is near a cap the batch alone could reach: no count can spare
        # reading the times (at most the cap and the batch's sends per recipient).
        _recipient_day_times(session, usage, chats, day, None)
        return
    counted = session.execute(
        select(Message.chat_id, Message.line_id, Message.recipient, func.count())
        .where(Message.chat_id.in_(chats), day)
        .group_by(Message.chat_id, Message.line_id, Message.recipient)
    ).all()
    counts: dict[tuple[int, str], int] = {}
    for _, line_id, recipient, count in counted:
        if line_id in usage:
            counts[line_id, recipient] = counts.get((line_id, recipient), 0) + count
    near = {
        pair
        for pair, count in counts.items()
        if count + headroom >= limits[pair[0]].sends_per_recipient_per_day
    }
    for (line_id, recipient), count in counts.items():
        if (line_id, recipient) not in near:
            usage[line_id].recipient_day_unloaded[recipient] = count
    if near:
        wanted = {c for c, line, whom, _ in counted if c is not None and (line, whom) in near}
        _recipient_day_times(session, usage, wanted, day, near)


def _recipient_day_times(
    session: Session,
    usage: dict[int, LineUsage],
    chats: Collection[int],
    day: ColumnElement[bool],
    near: Collection[tuple[int, str]] | None,
) -> None:
    """The last day's send times on ``chats``, oldest first, for the ``near`` pairs of
    line and recipient (None: all of them)."""
    rows = session.execute(
        select(Message.line_id, Message.recipient, Message.dispatched_at)
        .where(Message.chat_id.in_(chats), day)
        .order_by(Message.dispatched_at)
    )
    for line_id, recipient, at in rows:
        if line_id in usage and at is not None and (near is None or (line_id, recipient) in near):
            usage[line_id].recipient_day.setdefault(recipient, []).append(at)


def load_bodies(
    session: Session,
    usage: dict[int, LineUsage],
    digests: Collection[str],
    now: datetime,
    headroom: int,
    body_limit: int,
    recipients: Collection[str] | None = None,
) -> None:
    """How many recipients each of ``digests`` reached on each line of ``usage`` in the
    last hour; all of them, with the last time, where a line is within ``headroom`` of
    ``body_limit``. ``recipients``: also read when the digests reached them (else
    ``usage`` holds that already).

    A body reached no more recipients than its line did: on a line far from the cap by
    that count, no body needs counting.
    """

    def near(count: int) -> bool:
        return count + headroom >= body_limit

    ids = []
    for line, entry in usage.items():
        reached = entry.recipients_last_hour(now)
        if near(reached):
            ids.append(line)
            continue
        for digest in digests:
            known = len(entry.by_body.get(digest, {}))
            entry.bodies_unloaded[digest] = max(0, reached - known)
    if not ids:
        return
    if recipients is not None:
        chats = _chats(session, ids, recipients)
        _load_recipients(session, usage, chats, digests, now, bodies_only=True)
    hour = Message.dispatched_at > now - HOUR
    rows = session.execute(
        select(Message.line_id, Message.body_hash, func.count(distinct(Message.recipient)))
        .where(Message.line_id.in_(ids), Message.body_hash.in_(set(digests)), hour)
        .group_by(Message.line_id, Message.body_hash)
    )
    for line_id, body_hash, count in rows:
        if line_id is None or body_hash is None:
            continue
        entry = usage[line_id]
        if not near(count):
            entry.bodies_unloaded[body_hash] = max(0, count - len(entry.by_body.get(body_hash, {})))
            continue
        entry.by_body[body_hash] = _last_sends(
            session, now, Message.line_id == line_id, Message.body_hash == body_hash
        )
