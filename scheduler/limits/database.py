"""Limits counted from the store itself: the embedded default, needing no other server."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict, check
from scheduler.limits.base import Limiter, Ticket
from scheduler.models import Chat, Line, Message
from scheduler.usage import load_usage


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
        line = session.scalars(
            select(Line).where(Line.number == ticket.line).with_for_update()
        ).one()
        message = session.get_one(Message, ticket.message_id)
        if message.dispatched_at is not None and message.attempts >= ticket.attempt:
            return Verdict(now, "", 0)  # this attempt is already counted
        usage = load_usage(session, [line], {line.id: limits}, now, 1, [ticket.recipient])
        verdict = check(usage[line.id], limits, ticket.recipient, ticket.new_chat, now)
        if verdict.allowed_at > now:
            return verdict
        message.dispatched_at = now
        message.attempts = ticket.attempt
        if ticket.new_chat:
            chat = session.scalars(
                select(Chat).where(Chat.line_id == line.id, Chat.recipient == ticket.recipient)
            ).one()
            chat.first_sent_at = chat.first_sent_at or now
        session.flush()
        return verdict
