"""Calling the provider for messages that passed the gate, and recording its answer."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from sqlalchemy import CursorResult, update

from policies.outcome import Failure, after_failure
from policies.statuses import Action, LineStatus
from scheduler.answers import BatchAnswers
from scheduler.decisions import STATE_AFTER, Report, record_decision
from scheduler.health import opt_out
from scheduler.models import Chat, DecisionRecord, Line, Message, MessageState
from scheduler.providers import Outbound, SendFailed
from scheduler.runtime import Runtime, utcnow

log = logging.getLogger(__name__)


class Send(NamedTuple):
    """One message that passed the gate, ready for its provider."""

    provider: str
    line_id: int
    outbound: Outbound


def send_one(runtime: Runtime, send: Send, report: Report, answers: BatchAnswers) -> None:
    """Call the provider and record its answer, which is final."""
    outbound = send.outbound
    earlier = answers.earlier(send.line_id, outbound)
    if earlier is not None:
        record_failure(runtime, outbound, earlier, report)
        return
    try:
        sent = runtime.providers.get(send.provider).send(outbound)
    except SendFailed as failure:
        answers.note(send.line_id, outbound, failure)
        record_failure(runtime, outbound, failure, report)
        return
    except Exception as exc:
        # A provider bug or an answer the client cannot read must not leave the message
        # SENDING for ever: retry it with the same idempotency key.
        log.exception("provider %s failed on %s", send.provider, outbound.message_id)
        crashed = SendFailed(Failure.TRANSIENT, f"provider error: {type(exc).__name__}")
        record_failure(runtime, outbound, crashed, report)
        return
    now = utcnow()
    with runtime.sessions.begin() as session:
        moved: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(Message)
            .where(
                Message.id == outbound.message_id,
                # A late answer also settles a send a reconciler flagged for a person.
                Message.state.in_([MessageState.SENDING, MessageState.NEEDS_REVIEW]),
            )
            .values(
                state=MessageState.SENT.value,
                sent_at=now,
                provider_message_id=sent.provider_message_id,
                last_code="sent",
                last_reason=f"accepted by {send.provider}",
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if sent.provider_chat_id:
            session.execute(
                update(Chat)
                .where(
                    Chat.line_id == send.line_id,
                    Chat.recipient == outbound.recipient,
                    Chat.provider_chat_id.is_(None),
                )
                .values(provider_chat_id=sent.provider_chat_id)
                .execution_options(synchronize_session=False)
            )
        session.add(
            DecisionRecord(
                message_id=outbound.message_id,
                at=now,
                action="SENT",
                code="sent",
                reason=f"accepted by {send.provider}"
                + (f" as {sent.provider_message_id}" if sent.provider_message_id else ""),
                line=outbound.line,
            )
        )
    if moved.rowcount:
        report.add("SENT")
    else:
        # Someone else settled the message meanwhile (a reconciler); the send stands.
        log.warning("sent %s but it was no longer SENDING", outbound.message_id)
        report.add("sent_unrecorded")


def record_failure(
    runtime: Runtime, outbound: Outbound, failure: SendFailed, report: Report
) -> None:
    """Record a failed attempt and what the provider's answer means for the message."""
    now = utcnow()
    policy = runtime.policy
    with runtime.sessions.begin() as session:
        message = session.get_one(Message, outbound.message_id, with_for_update=True)
        if message.state != MessageState.SENDING.value:
            return
        decision = after_failure(
            failure.failure, failure.detail, message.attempts, policy, now, failure.retry_after
        )
        message.state = STATE_AFTER[decision.action].value
        message.not_before = decision.not_before
        message.held_since = now if decision.action is Action.DEFER else None
        message.last_code, message.last_reason = decision.code, decision.reason
        message.updated_at = now
        record_decision(session, message, decision, now, outbound.line)
        if failure.failure is Failure.RECIPIENT_OPTED_OUT and message.chat_id is not None:
            chat = session.get_one(Chat, message.chat_id, with_for_update=True)
            opt_out(session, policy, chat, now, "provider refused: recipient opted out")
        elif failure.failure is Failure.LINE_BLOCKED and message.line_id is not None:
            line = session.get_one(Line, message.line_id, with_for_update=True)
            line.status, line.status_updated_at = LineStatus.FLAGGED.value, now
    log.warning("send of %s failed: %s", outbound.message_id, failure)
    report.add(decision.action.value)
