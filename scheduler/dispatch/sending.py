"""Calling the provider for messages that passed the gate, and recording its answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.outcome import Failure, after_failure
from policies.statuses import Action
from scheduler import constants, metrics
from scheduler.dispatch.answers import BatchAnswers
from scheduler.dispatch.report import Report
from scheduler.providers import Outbound, SendFailed, Sent
from scheduler.runtime import Runtime
from scheduler.signals import consent, health
from scheduler.store import transitions
from scheduler.store.bulk import one_of, pipelined
from scheduler.store.models import Chat, Line, Message, MessageState

log = logging.getLogger(__name__)


class Send(NamedTuple):
    """One message that passed the gate, ready for its provider."""

    provider: str
    line_id: int
    outbound: Outbound
    #: When the message was enqueued: its send's latency is measured from here.
    enqueued_at: datetime

    @classmethod
    def of(cls, message: Message, line: Line, chat: Chat) -> Send:
        """The send of ``message``; its id is the idempotency key on every attempt."""
        outbound = Outbound(
            message_id=message.id,
            line=line.number,
            recipient=message.recipient,
            body=message.body,
            idempotency_key=message.id,
            provider_chat_id=chat.provider_chat_id,
        )
        return cls(line.provider, line.id, outbound, message.created_at)


class Accepted(NamedTuple):
    """A send the provider accepted, waiting to be recorded."""

    send: Send
    sent: Sent
    #: When the provider answered: a line healthgate flagged before then can send.
    at: datetime


def send_batch(
    runtime: Runtime, sends: Sequence[Send], report: Report, answers: BatchAnswers
) -> None:
    """Call the provider for each send, in order, and record the answers.

    Accepted sends are recorded together, in one transaction per
    ``RECORD_SENT_SECONDS`` of provider calls rather than one per message; a failure is
    recorded at once, since it can change what follows (an opt-out, a flagged line).
    """
    accepted: list[Accepted] = []
    since = time.monotonic()
    for send in sends:
        sent = _call(runtime, send, report, answers)
        if sent is not None:
            accepted.append(Accepted(send, sent, runtime.clock()))
        if accepted and time.monotonic() - since >= constants.RECORD_SENT_SECONDS:
            record_sent(runtime, accepted, report)
            accepted, since = [], time.monotonic()
    record_sent(runtime, accepted, report)


def send_one(runtime: Runtime, send: Send, report: Report, answers: BatchAnswers) -> None:
    """Call the provider and record its answer, which is final."""
    send_batch(runtime, [send], report, answers)


def _call(runtime: Runtime, send: Send, report: Report, answers: BatchAnswers) -> Sent | None:
    """The provider's acceptance, or None when it refused (refusals are recorded here)."""
    outbound = send.outbound
    earlier = answers.earlier(send.line_id, outbound)
    if earlier is not None:
        record_failure(runtime, outbound, earlier, report)
        return None
    try:
        sent = runtime.providers.get(send.provider).send(outbound)
    except SendFailed as failure:
        _count_error(send, failure)
        answers.note(send.line_id, outbound, failure)
        record_failure(runtime, outbound, failure, report)
    except Exception as exc:
        # A provider bug or an answer the client cannot read must not leave the message
        # SENDING for ever: retry it with the same idempotency key.
        log.exception("provider %s failed on %s", send.provider, outbound.message_id)
        crashed = SendFailed(Failure.TRANSIENT, f"provider error: {type(exc).__name__}")
        _count_error(send, crashed)
        record_failure(runtime, outbound, crashed, report)
    else:
        metrics.SENDS.labels(line=outbound.line, provider=send.provider).inc()
        return sent
    return None


def _count_error(send: Send, failure: SendFailed) -> None:
    metrics.PROVIDER_ERRORS.labels(
        line=send.outbound.line, provider=send.provider, failure=failure.failure.value
    ).inc()


def record_sent(runtime: Runtime, accepted: Sequence[Accepted], report: Report) -> None:
    """Move accepted sends from SENDING to SENT, with a decision record each, in one
    transaction; one that someone else settled meanwhile (a reconciler) is left as it is."""
    if not accepted:
        return
    now = runtime.clock()
    ids = [a.send.outbound.message_id for a in accepted]
    with runtime.sessions.begin() as session:
        sending = set(
            session.scalars(
                select(Message.id)
                .where(
                    one_of(runtime.engine.dialect, Message.id, ids),
                    # A late answer also settles a send a reconciler flagged for a person.
                    Message.state.in_([MessageState.SENDING, MessageState.NEEDS_REVIEW]),
                )
                .order_by(Message.id)
                .with_for_update()
            )
        )
        moving = [a for a in accepted if a.send.outbound.message_id in sending]
        _unblock(session, accepted)
        for a in accepted:
            if a.sent.provider_chat_id:
                session.execute(
                    update(Chat)
                    .where(
                        Chat.line_id == a.send.line_id,
                        Chat.recipient == a.send.outbound.recipient,
                        Chat.provider_chat_id.is_(None),
                    )
                    .values(provider_chat_id=a.sent.provider_chat_id)
                    .execution_options(synchronize_session=False)
                )
        connection = session.connection()
        # The two writes go out without waiting for each other: the server updates the
        # messages while the decisions' rows are built.
        with pipelined(connection):
            # Locked above and still SENDING (or flagged for review): one statement for all.
            transitions.sent(
                connection,
                [
                    transitions.Accepted(
                        a.send.outbound.message_id, a.send.provider, a.sent.provider_message_id
                    )
                    for a in moving
                ],
                now,
            )
            transitions.write_decisions(
                connection,
                [
                    transitions.record(
                        a.send.outbound.message_id,
                        Action.SENT,
                        Code.SENT,
                        f"accepted by {a.send.provider}"
                        + (
                            f" as {a.sent.provider_message_id}"
                            if a.sent.provider_message_id
                            else ""
                        ),
                        now,
                        line=a.send.outbound.line,
                    )
                    for a in accepted
                ],
            )
    report.add(Action.SENT, len(moving))
    for a in moving:
        metrics.SEND_LATENCY.observe(max(0.0, (now - a.send.enqueued_at).total_seconds()))
    for a in accepted:
        if a.send.outbound.message_id not in sending:
            # Someone else settled the message meanwhile (a reconciler); the send stands.
            log.warning("sent %s but it was no longer SENDING", a.send.outbound.message_id)
            report.add("sent_unrecorded")


def _unblock(session: Session, accepted: Sequence[Accepted]) -> None:
    """A send accepted after healthgate flagged its line (a probe, or one already under
    way) shows the line can send: the flag is lifted as of that answer."""
    latest: dict[int, Accepted] = {}
    for a in accepted:
        if a.send.line_id not in latest or a.at > latest[a.send.line_id].at:
            latest[a.send.line_id] = a
    flagged = session.scalars(
        select(Line)
        .where(Line.id.in_(list(latest)), Line.blocked_at.is_not(None))
        .order_by(Line.id)
        .with_for_update()
    )
    for line in flagged:
        a = latest[line.id]
        if line.blocked_at is not None and a.at > line.blocked_at:
            health.unblock_line(session, line, a.at, f"a send was accepted by {a.send.provider}")


def record_failure(
    runtime: Runtime, outbound: Outbound, failure: SendFailed, report: Report
) -> None:
    """Record a failed attempt and what the provider's answer means for the message."""
    now = runtime.clock()
    policy = runtime.policy
    with runtime.sessions.begin() as session:
        message = session.get_one(Message, outbound.message_id, with_for_update=True)
        if message.state != MessageState.SENDING.value:
            return
        # A message a person retried has its tries again, counted from that retry.
        tries = message.attempts - message.retried_at_attempt
        decision = after_failure(
            failure.failure, failure.detail, tries, policy, now, failure.retry_after
        )
        deferred = decision.action is Action.DEFER
        held_since = (message.held_since or now) if deferred else message.held_since
        transitions.apply(session, message, decision, now, outbound.line, held_since=held_since)
        if failure.failure is Failure.RECIPIENT_OPTED_OUT and message.chat_id is not None:
            chat = consent.lock_chats(session, session.get_one(Chat, message.chat_id))
            consent.opt_out(
                session, policy, chat, now, now, "provider refused: recipient opted out"
            )
        elif failure.failure is Failure.LINE_BLOCKED and message.line_id is not None:
            line = session.get_one(Line, message.line_id)
            health.block_line(session, line, now, f"provider refused: {failure.detail}")
    log.warning("send of %s failed: %s", outbound.message_id, failure)
    report.add(decision.action.value)
