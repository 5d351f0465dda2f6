"""Limits counted from the store itself: the embedded default, needing no other server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.errors import InvalidInput
from policies.pace import Limits, Verdict, check
from policies.usage import LineUsage
from scheduler.limits.base import Limiter, Ticket
from scheduler.store.models import Chat, Line, Message
from scheduler.store.usage import load_usage

#: The caps a Limits holds (its note aside).
_CAPS = tuple(f.name for f in fields(Limits) if f.name != "note")


class DatabaseLimiter(Limiter):
    """A send is counted by its message row: ``dispatched_at`` set in the gating transaction.

    Dispatchers of one line serialize on the line's row (``SELECT ... FOR UPDATE``, taken
    in id order so two dispatchers never deadlock); SQLite serializes every writer anyway
    (``BEGIN IMMEDIATE``). So the usage one dispatcher reads cannot change until it
    commits, and a rolled-back dispatch consumed nothing.
    """

    def lock(self, session: Session, line_ids: Collection[int]) -> None:
        if line_ids:
            # populate_existing: the lines as they are now, should one have changed state
            # between the batch's first read and this lock.
            session.scalars(
                select(Line)
                .where(Line.id.in_(line_ids))
                .order_by(Line.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).all()

    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        return self.hit_many(session, [(ticket, limits)], now)[0]

    def hit_many(
        self, session: Session, requests: Sequence[tuple[Ticket, Limits]], now: datetime
    ) -> list[Verdict]:
        """Read each line's usage once, then check and count the sends in order in Python."""
        if not requests:
            return []
        lines = _locked_lines(session, {ticket.line for ticket, _ in requests})
        messages = _messages(session, {ticket.message_id for ticket, _ in requests})
        chats = _new_chats(session, lines, requests)
        usage = _usage(session, lines, requests, now)
        verdicts = []
        for ticket, limits in requests:
            line = lines[ticket.line]
            message = messages[ticket.message_id]
            if message.dispatched_at is not None and message.attempts >= ticket.attempt:
                verdicts.append(Verdict(now, "", 0))  # this attempt is already counted
                continue
            verdict = check(usage[line.id], limits, ticket.recipient, ticket.new_chat, now)
            verdicts.append(verdict)
            if verdict.allowed_at > now:
                continue
            # A first dispatch of the line's own message adds exactly one send to what the
            # store holds; any other replaces an earlier dispatch time, so read it again.
            adds_one = message.dispatched_at is None and message.line_id == line.id
            message.dispatched_at = now
            message.attempts = ticket.attempt
            chat = chats.get((line.id, ticket.recipient)) if ticket.new_chat else None
            started = chat is not None and chat.first_sent_at is None
            if chat is not None:
                chat.first_sent_at = chat.first_sent_at or now
            if adds_one:
                usage[line.id].record(ticket.recipient, now, new_chat=started)
            else:
                usage = _usage(session, lines, requests, now)
        session.flush()
        return verdicts


def _locked_lines(session: Session, numbers: Collection[str]) -> dict[str, Line]:
    """The lines of these numbers, each locked (in id order, as :meth:`lock` takes them)."""
    lines = session.scalars(
        select(Line).where(Line.number.in_(numbers)).order_by(Line.id).with_for_update()
    ).all()
    found = {line.number: line for line in lines}
    missing = sorted(set(numbers) - found.keys())
    if missing:
        raise InvalidInput("ticket.line", missing[0], "no such line")
    return found


def _messages(session: Session, ids: Collection[str]) -> dict[str, Message]:
    """The batch's messages, read in one query rather than one a message."""
    found = {
        message.id: message
        for message in session.scalars(select(Message).where(Message.id.in_(ids)))
    }
    missing = sorted(set(ids) - found.keys())
    if missing:
        raise InvalidInput("ticket.message_id", missing[0], "no such message")
    return found


def _new_chats(
    session: Session, lines: Mapping[str, Line], requests: Sequence[tuple[Ticket, Limits]]
) -> dict[tuple[int, str], Chat]:
    """The chats the new-conversation sends start, by line id and recipient."""
    wanted = {
        (lines[ticket.line].id, ticket.recipient) for ticket, _ in requests if ticket.new_chat
    }
    if not wanted:
        return {}
    chats = session.scalars(
        select(Chat).where(
            Chat.line_id.in_({line_id for line_id, _ in wanted}),
            Chat.recipient.in_({recipient for _, recipient in wanted}),
        )
    ).all()
    found = {(chat.line_id, chat.recipient): chat for chat in chats}
    missing = sorted(wanted - found.keys())
    if missing:
        line_id, recipient = missing[0]
        raise InvalidInput("ticket.recipient", recipient, f"no chat on line id {line_id}")
    return found


def _usage(
    session: Session,
    lines: Mapping[str, Line],
    requests: Sequence[tuple[Ticket, Limits]],
    now: datetime,
) -> dict[int, LineUsage]:
    """The lines' usage as the store holds it, enough for every send of ``requests``.

    Each window is read in full where the line's count plus its sends in the batch could
    reach the lowest cap the batch carries for it, so no send meets a cap unloaded.
    """
    lowest: dict[int, Limits] = {}
    for ticket, limits in requests:
        line_id = lines[ticket.line].id
        known = lowest.get(line_id, limits)
        lowest[line_id] = Limits(
            **{cap: min(getattr(known, cap), getattr(limits, cap)) for cap in _CAPS}
        )
    sends = Counter(ticket.line for ticket, _ in requests)
    recipients = {ticket.recipient for ticket, _ in requests}
    return load_usage(session, list(lines.values()), lowest, now, max(sends.values()), recipients)
