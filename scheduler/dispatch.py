"""Claiming due messages and dispatching them through the gate, in batches."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from policies.config import OptOutScope, Policy
from policies.decision import Decision
from policies.decision import send as fit_to_send
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide, limits_for, throttled
from policies.outcome import Failure, after_failure
from policies.statuses import Action, ChatHealth, LineStatus
from policies.usage import LineUsage
from scheduler.answers import BatchAnswers
from scheduler.enqueue import chat_for
from scheduler.health import opt_out
from scheduler.limits import Ticket
from scheduler.lines import line_facts
from scheduler.models import (
    WAITING_STATES,
    Chat,
    DecisionRecord,
    Line,
    Message,
    MessageState,
    OptOut,
)
from scheduler.providers import Outbound, SendFailed
from scheduler.router import rank_lines
from scheduler.runtime import Runtime, utcnow
from scheduler.usage import load_usage

log = logging.getLogger(__name__)

#: Message state after each gate action.
STATE_AFTER = {
    Action.SEND: MessageState.SENDING,
    Action.THROTTLE: MessageState.THROTTLED,
    Action.DEFER: MessageState.DEFERRED,
    Action.DROP: MessageState.DROPPED,
    Action.EXPIRE: MessageState.EXPIRED,
    Action.FAIL: MessageState.FAILED,
}


class Claim(NamedTuple):
    """Messages leased to one dispatcher; only the holder of ``token`` may move them on."""

    token: str
    ids: list[str]


@dataclass
class Report:
    """What one dispatch pass did, by outcome."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n

    def merge(self, other: Report) -> None:
        for outcome, n in other.counts.items():
            self.add(outcome, n)


def claim_due(runtime: Runtime, now: datetime, limit: int) -> Claim:
    """Lease up to ``limit`` due messages atomically.

    PostgreSQL skips rows another claimer holds (``FOR UPDATE SKIP LOCKED``); SQLite
    transactions take the write lock first (``BEGIN IMMEDIATE``), so claims never
    overlap. Claims whose lease ran out go back to the queue first.
    """
    settings = runtime.settings
    token = uuid.uuid4().hex
    with runtime.sessions.begin() as session:
        _expire_leases(session, now)
        in_flight = (
            session.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.state == MessageState.CLAIMED)
            )
            or 0
        )
        room = min(limit, settings.max_in_flight - in_flight)
        if room <= 0:
            return Claim(token, [])
        due = (
            select(Message.id)
            .where(Message.state.in_(WAITING_STATES), Message.not_before <= now)
            .order_by(Message.not_before, Message.id)
            .limit(room)
            .with_for_update(skip_locked=True)
        )
        ids = session.scalars(
            update(Message)
            .where(Message.id.in_(due.scalar_subquery()))
            .values(
                state=MessageState.CLAIMED.value,
                claim_token=token,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds),
                updated_at=now,
            )
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        ).all()
    return Claim(token, list(ids))


def _expire_leases(session: Session, now: datetime) -> None:
    session.execute(
        update(Message)
        .where(Message.state == MessageState.CLAIMED, Message.lease_expires_at <= now)
        .values(state=MessageState.QUEUED.value, claim_token=None, not_before=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )


@dataclass
class _Batch:
    """The store's view of one batch while it is being decided."""

    policy: Policy
    now: datetime
    lines: dict[int, Line]
    chats: dict[int, Chat]
    opted_out: set[str]
    usage: dict[int, LineUsage]
    unanswered: dict[int, tuple[datetime, ...]]
    #: Dispatch times of each body digest to each AT_RISK chat, for the repeat rule.
    same_body: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)


def dispatch_claimed(runtime: Runtime, claim: Claim, now: datetime | None = None) -> Report:
    """Gate every message of ``claim``, then send those that passed.

    Decisions are taken and recorded in one transaction that locks the batch's chats,
    so an opt-out recorded meanwhile either precedes the decision or waits for it.
    Provider calls happen after that commit, each recorded as it returns.
    """
    now = now or utcnow()
    report = Report()
    with runtime.sessions.begin() as session:
        messages = session.scalars(
            select(Message)
            .where(
                Message.id.in_(claim.ids),
                Message.state == MessageState.CLAIMED,
                Message.claim_token == claim.token,
            )
            .order_by(Message.id)
            .with_for_update()
        ).all()
        if len(messages) < len(claim.ids):
            report.add("stale_claim", len(claim.ids) - len(messages))
        if not messages:
            return report
        batch = _load(session, messages, runtime, now)
        to_send = [
            send
            for message in messages
            if (send := _gate(session, message, batch, report, runtime)) is not None
        ]
    answers = BatchAnswers(runtime.policy.opt_out.scope)
    for send in to_send:
        _send(runtime, send, report, answers)
    return report


def _load(session: Session, messages: Sequence[Message], runtime: Runtime, now: datetime) -> _Batch:
    policy = runtime.policy
    lines = {line.id: line for line in session.scalars(select(Line))}
    chat_ids = sorted({m.chat_id for m in messages if m.chat_id is not None})
    # Locked in id order, the same order every dispatcher uses, so none deadlock.
    chats = {
        chat.id: chat
        for chat in session.scalars(
            select(Chat).where(Chat.id.in_(chat_ids)).order_by(Chat.id).with_for_update()
        )
    }
    opted_out: set[str] = set()
    if policy.opt_out.scope is OptOutScope.ACCOUNT:
        opted_out = set(
            session.scalars(
                select(OptOut.recipient).where(
                    OptOut.recipient.in_({m.recipient for m in messages})
                )
            )
        )
    used = [lines[i] for i in sorted({m.line_id for m in messages if m.line_id is not None})]
    # A new recipient may move to any line, so a batch that has one locks them all.
    movable = any(not m.pinned and _is_new(chats.get(m.chat_id or 0)) for m in messages)
    runtime.limiter.lock(session, sorted(lines) if movable else [line.id for line in used])
    usage = _usage(session, used, policy, now, headroom=len(messages))
    return _Batch(
        policy,
        now,
        lines,
        chats,
        opted_out,
        usage,
        _unanswered(session, chats, policy, now),
        _same_body(session, chats, messages, policy, now),
    )


def _is_new(chat: Chat | None) -> bool:
    return chat is None or chat.first_sent_at is None


def _usage(
    session: Session, lines: Sequence[Line], policy: Policy, now: datetime, headroom: int
) -> dict[int, LineUsage]:
    day_limits = {
        line.id: limits_for(line_facts(line), policy, now).sends_per_day for line in lines
    }
    return load_usage(session, lines, day_limits, now, headroom)


def _same_body(
    session: Session,
    chats: dict[int, Chat],
    messages: Sequence[Message],
    policy: Policy,
    now: datetime,
) -> dict[tuple[int, str], list[datetime]]:
    """When each batch body digest went to each AT_RISK chat since its last reply.

    These are the repeat rule's facts: a reply lifts the rule, as it lifts the throttle.
    """
    at_risk = [c.id for c in chats.values() if c.health == ChatHealth.AT_RISK.value]
    digests = {m.body_hash for m in messages if m.body_hash is not None}
    found: dict[tuple[int, str], list[datetime]] = {}
    if not at_risk or not digests:
        return found
    rows = session.execute(
        select(Message.chat_id, Message.body_hash, Message.dispatched_at).where(
            Message.chat_id.in_(at_risk),
            Message.body_hash.in_(digests),
            Message.dispatched_at > now - policy.content.at_risk_repeat_window,
        )
    )
    for chat_id, digest, at in rows:
        if chat_id is None or digest is None or at is None:
            continue
        replied = chats[chat_id].last_inbound_at
        if replied is None or at > replied:
            found.setdefault((chat_id, digest), []).append(at)
    return found


def _unanswered(
    session: Session, chats: dict[int, Chat], policy: Policy, now: datetime
) -> dict[int, tuple[datetime, ...]]:
    """Dispatch times since the last reply, for AT_RISK chats (the only ones that need it)."""
    at_risk = [c for c in chats.values() if c.health == ChatHealth.AT_RISK.value]
    found: dict[int, list[datetime]] = {chat.id: [] for chat in at_risk}
    if not at_risk:
        return {}
    rows = session.execute(
        select(Message.chat_id, Message.dispatched_at)
        .where(
            Message.chat_id.in_(found),
            Message.dispatched_at > now - policy.chat.at_risk_window,
        )
        .order_by(Message.dispatched_at)
    )
    for chat_id, at in rows:
        chat = chats[chat_id] if chat_id is not None else None
        if chat is None or at is None:
            continue
        if chat.last_inbound_at is None or at > chat.last_inbound_at:
            found[chat.id].append(at)
    return {chat_id: tuple(times) for chat_id, times in found.items()}


def _facts(
    message: Message, batch: _Batch
) -> tuple[MessageFacts, ChatFacts, LineFacts | None, LineUsage]:
    line = batch.lines.get(message.line_id) if message.line_id is not None else None
    chat = batch.chats.get(message.chat_id) if message.chat_id is not None else None
    is_new = _is_new(chat)
    health = ChatHealth(chat.health) if chat else ChatHealth.HEALTHY
    if chat is not None and chat.opted_out_at is not None:
        health = ChatHealth.OPTED_OUT
    return (
        MessageFacts(
            recipient=message.recipient,
            expires_at=message.expires_at,
            held_since=message.held_since,
            may_reroute=not message.pinned and is_new,
            body_hash=message.body_hash,
        ),
        ChatFacts(
            health=health,
            recipient_opted_out=message.recipient in batch.opted_out,
            is_new=is_new,
            unanswered=batch.unanswered.get(chat.id, ()) if chat else (),
            same_body_sent=tuple(batch.same_body.get((chat.id, message.body_hash), ()))
            if chat and message.body_hash
            else (),
        ),
        None if line is None or not line.enabled else line_facts(line),
        batch.usage.get(line.id, LineUsage()) if line else LineUsage(),
    )


class _Send(NamedTuple):
    provider: str
    line_id: int
    outbound: Outbound


def _gate(
    session: Session, message: Message, batch: _Batch, report: Report, runtime: Runtime
) -> _Send | None:
    """Decide on one message and apply the decision; returns what to send, if anything."""
    attempt = message.attempts + 1
    decision, new_chat = _decide(session, message, batch, runtime)
    _apply(session, message, decision, batch)
    report.add(decision.action.value)
    if decision.action is not Action.SEND or message.line_id is None or message.chat_id is None:
        return None
    message.attempts = attempt
    line, chat = batch.lines[message.line_id], batch.chats[message.chat_id]
    chat.first_sent_at = chat.first_sent_at or batch.now
    batch.usage.setdefault(line.id, LineUsage()).record(
        message.recipient, batch.now, new_chat=new_chat, body_hash=message.body_hash
    )
    if message.body_hash is not None and (chat.id, message.body_hash) in batch.same_body:
        batch.same_body[(chat.id, message.body_hash)].append(batch.now)
    elif message.body_hash is not None and chat.health == ChatHealth.AT_RISK.value:
        batch.same_body[(chat.id, message.body_hash)] = [batch.now]
    if chat.id in batch.unanswered:
        batch.unanswered[chat.id] = (*batch.unanswered[chat.id], batch.now)
    outbound = Outbound(
        message_id=message.id,
        line=line.number,
        recipient=message.recipient,
        body=message.body,
        idempotency_key=message.id,
        provider_chat_id=chat.provider_chat_id,
    )
    return _Send(line.provider, line.id, outbound)


class _Decided(NamedTuple):
    decision: Decision
    #: The send starts a conversation.
    new_chat: bool


def _decide(session: Session, message: Message, batch: _Batch, runtime: Runtime) -> _Decided:
    """The gate's decision, after any reroute and the limiter; and whether the chat is new.

    A new recipient moves off a paused line, or off a line at a cap when another line
    can take it now; existing chats never move.
    """
    facts = _facts(message, batch)
    decision = decide(*facts, batch.policy, batch.now)
    no_line = facts[2] is None and decision.action is Action.DEFER
    if decision.action is Action.REROUTE or no_line:
        if _reroute(session, message, batch, decision):
            facts = _facts(message, batch)
        facts = (replace(facts[0], may_reroute=False), *facts[1:])
        decision = decide(*facts, batch.policy, batch.now)
    if decision.action is Action.SEND and facts[2] is not None:
        decision = _reserve(session, message, facts[2], facts[1].is_new, batch, runtime)
    capped = decision.action is Action.THROTTLE and decision.code.startswith("cap_")
    if capped and facts[0].may_reroute and _reroute(session, message, batch, decision, True):
        facts = _facts(message, batch)
        facts = (replace(facts[0], may_reroute=False), *facts[1:])
        decision = decide(*facts, batch.policy, batch.now)
        if decision.action is Action.SEND and facts[2] is not None:
            decision = _reserve(session, message, facts[2], facts[1].is_new, batch, runtime)
    return _Decided(decision, facts[1].is_new)


def _reserve(
    session: Session,
    message: Message,
    line: LineFacts,
    new_chat: bool,
    batch: _Batch,
    runtime: Runtime,
) -> Decision:
    """Consume one send from the global limiter; THROTTLE, naming the cap, when it is full.

    The gate checked the batch's view of usage; this re-checks every cap against the
    count every worker shares and consumes only if all pass.
    """
    limits = limits_for(line, batch.policy, batch.now)
    ticket = Ticket(message.id, message.attempts + 1, line.number, message.recipient, new_chat)
    verdict = runtime.limiter.hit(session, ticket, limits, batch.now)
    if verdict.allowed_at <= batch.now:
        return fit_to_send()
    return throttled(verdict, line.number, limits, message.expires_at)


def _reroute(
    session: Session, message: Message, batch: _Batch, decision: Decision, free: bool = False
) -> bool:
    """Move a new recipient to the best line that may take one; False when there is none.

    With ``free``, only to a line with room under every cap now.
    """
    if message.pinned:
        return False
    choices = [
        choice.line
        for choice in rank_lines(session, batch.policy, batch.now)
        if choice.line.id != message.line_id and (not free or choice.allowed_at <= batch.now)
    ]
    if not choices:
        return False
    line = choices[0]
    chat = chat_for(session, line, message.recipient, batch.now)
    batch.lines[line.id] = line
    batch.chats[chat.id] = chat
    if line.id not in batch.usage:
        batch.usage.update(_usage(session, [line], batch.policy, batch.now, headroom=1))
    message.line_id, message.chat_id = line.id, chat.id
    moved = Decision(
        Action.REROUTE, decision.code, f"{decision.reason}; moved to line {line.number}"
    )
    _record(session, message, moved, batch.now, line.number)
    return True


def _apply(session: Session, message: Message, decision: Decision, batch: _Batch) -> None:
    now = batch.now
    state = STATE_AFTER[decision.action]
    message.state = state.value
    message.claim_token = None
    message.lease_expires_at = None
    message.not_before = decision.not_before
    message.last_code, message.last_reason = decision.code, decision.reason
    message.updated_at = now
    if decision.action is Action.DEFER:
        message.held_since = message.held_since or now
    else:
        message.held_since = None
    if decision.action is Action.SEND:
        message.dispatched_at = now
    line = batch.lines.get(message.line_id) if message.line_id is not None else None
    _record(session, message, decision, now, line.number if line else None)


def _record(
    session: Session, message: Message, decision: Decision, now: datetime, line: str | None
) -> None:
    session.add(
        DecisionRecord(
            message_id=message.id,
            at=now,
            action=decision.action.value,
            code=decision.code,
            reason=decision.reason,
            not_before=decision.not_before,
            line=line,
        )
    )


def _send(runtime: Runtime, send: _Send, report: Report, answers: BatchAnswers) -> None:
    """Call the provider and record its answer, which is final."""
    outbound = send.outbound
    earlier = answers.earlier(send.line_id, outbound)
    if earlier is not None:
        _record_failure(runtime, outbound, earlier, report)
        return
    try:
        sent = runtime.providers.get(send.provider).send(outbound)
    except SendFailed as failure:
        answers.note(send.line_id, outbound, failure)
        _record_failure(runtime, outbound, failure, report)
        return
    except Exception as exc:
        # A provider bug or an answer the client cannot read must not leave the message
        # SENDING for ever: retry it with the same idempotency key.
        log.exception("provider %s failed on %s", send.provider, outbound.message_id)
        crashed = SendFailed(Failure.TRANSIENT, f"provider error: {type(exc).__name__}")
        _record_failure(runtime, outbound, crashed, report)
        return
    now = utcnow()
    with runtime.sessions.begin() as session:
        moved: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(Message)
            .where(Message.id == outbound.message_id, Message.state == MessageState.SENDING)
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


def _record_failure(
    runtime: Runtime, outbound: Outbound, failure: SendFailed, report: Report
) -> None:
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
        _record(session, message, decision, now, outbound.line)
        if failure.failure is Failure.RECIPIENT_OPTED_OUT and message.chat_id is not None:
            chat = session.get_one(Chat, message.chat_id, with_for_update=True)
            opt_out(session, policy, chat, now, "provider refused: recipient opted out")
        elif failure.failure is Failure.LINE_BLOCKED and message.line_id is not None:
            line = session.get_one(Line, message.line_id, with_for_update=True)
            line.status, line.status_updated_at = LineStatus.FLAGGED.value, now
    log.warning("send of %s failed: %s", outbound.message_id, failure)
    report.add(decision.action.value)


def drain(runtime: Runtime, now: datetime | None = None, batch: int | None = None) -> Report:
    """Dispatch everything due at ``now`` in this process, then return (scripts, cron, tests)."""
    report = Report()
    size = batch or runtime.settings.dispatch_batch
    while True:
        moment = now or utcnow()
        claim = claim_due(runtime, moment, size)
        if not claim.ids:
            return report
        report.merge(dispatch_claimed(runtime, claim, moment))
