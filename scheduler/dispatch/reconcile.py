"""Reconciling sends never confirmed: a worker died between the provider call and its record.

A message passes the gate and is committed SENDING before its provider is called; the
answer is recorded after. A worker that dies in between leaves it SENDING. Once that has
lasted ``reconcile_after_seconds``, beat's tick looks at it again:

- its provider deduplicates by idempotency key (``Provider.deduplicates``): it is sent
  again with the same key, so the provider delivers it once whether or not the first
  attempt reached it;
- its provider cannot tell (no idempotency key), or the recipient opted out since: it
  becomes ``needs_review`` with the reason, for a person, and is never resent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.statuses import Action
from scheduler.dispatch.answers import BatchAnswers
from scheduler.dispatch.report import Report
from scheduler.dispatch.sending import Send, send_one
from scheduler.runtime import Runtime
from scheduler.store import transitions
from scheduler.store.models import Chat, Line, Message, MessageState, OptOut

#: The code every reconciliation records, in ``explain`` and on the message.
UNCONFIRMED = Code.SEND_UNCONFIRMED


def reconcile(runtime: Runtime, now: datetime, limit: int) -> Report:
    """Resend or flag up to ``limit`` messages SENDING for too long; what was done, by outcome.

    Each one is taken under its row lock and its chat's, and leased for another
    ``reconcile_after_seconds``, so concurrent ticks never reconcile one message twice
    at once and an opt-out of its chat serializes with the decision to resend.
    """
    after = timedelta(seconds=runtime.settings.reconcile_after_seconds)
    report = Report()
    with runtime.sessions.begin() as session:
        stuck = session.scalars(
            select(Message)
            .where(
                Message.state == MessageState.SENDING,
                Message.dispatched_at <= now - after,
                or_(Message.lease_expires_at.is_(None), Message.lease_expires_at <= now),
            )
            .order_by(Message.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not stuck:
            return report
        to_send = [
            send
            for message in stuck
            if (send := _settle(session, runtime, message, now, after)) is not None
        ]
    if len(stuck) > len(to_send):
        report.add("needs_review", len(stuck) - len(to_send))
    answers = BatchAnswers(runtime.policy.opt_out.scope)
    for send in to_send:
        report.add("resent")
        send_one(runtime, send, report, answers)
    return report


def _settle(
    session: Session, runtime: Runtime, message: Message, now: datetime, after: timedelta
) -> Send | None:
    """Lease ``message`` for a resend with the same key, or flag it; what to send, if anything."""
    line = session.get_one(Line, message.line_id)
    chat = session.scalars(select(Chat).where(Chat.id == message.chat_id).with_for_update()).one()
    started = message.dispatched_at.isoformat() if message.dispatched_at else "unknown"
    opted_out = chat.opted_out_at is not None or session.get(OptOut, chat.recipient) is not None
    deduplicates = runtime.providers.get(line.provider).deduplicates
    if deduplicates and not opted_out:
        reason = (
            f"no answer recorded for the send started at {started}; sent again with the "
            f"same idempotency key, which {line.provider} delivers once"
        )
        transitions.move_one(
            session, message, Action.RECONCILE, now, UNCONFIRMED, reason,
            line=line.number, to=MessageState.SENDING, mark=False,
            lease_expires_at=now + after,
        )  # fmt: skip
        return Send.of(message, line, chat)
    why = (
        "the recipient opted out since, so it is not sent again"
        if opted_out
        else f"{line.provider} cannot tell whether it was delivered (no idempotency key)"
    )
    reason = f"no answer recorded for the send started at {started}; {why}; needs a person"
    transitions.move_one(
        session, message, Action.RECONCILE, now, UNCONFIRMED, reason,
        line=line.number, to=MessageState.NEEDS_REVIEW, lease_expires_at=None,
    )  # fmt: skip
    return None
