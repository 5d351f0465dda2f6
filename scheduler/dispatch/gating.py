"""Dispatching claimed batches through the gate: decide, apply, then send."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from policies.codes import CAP_CODES, Code
from policies.decision import Decision
from policies.decision import send as fit_to_send
from policies.gate import LineFacts, decide, limits_of, throttled
from policies.pace import Limits
from policies.statuses import Action, LineReputation, LineStatus
from scheduler.dispatch.answers import BatchAnswers
from scheduler.dispatch.batch import Batch, Facts, facts_for, load_batch
from scheduler.dispatch.claims import Claim, claim_due
from scheduler.dispatch.policy_change import apply_policy_change
from scheduler.dispatch.report import Report
from scheduler.dispatch.sending import Send, send_batch
from scheduler.limits import Ticket
from scheduler.runtime import Runtime, utcnow
from scheduler.store.bulk import one_of
from scheduler.store.lines import claim_probe
from scheduler.store.models import Chat, Message, MessageState
from scheduler.store.router import chat_for, eligible_lines, rank

__all__ = ["dispatch_claimed", "drain", "in_turn"]

#: Who applies a policy change found by ``drain`` (the tick names its worker).
DRAIN_WORKER = "drain"


def dispatch_claimed(runtime: Runtime, claim: Claim, now: datetime | None = None) -> Report:
    """Gate every message of ``claim``, then send those that passed.

    Decisions are taken and recorded in one transaction that locks the batch's chats,
    so an opt-out recorded meanwhile either precedes the decision or waits for it.
    Provider calls happen after that commit; their answers are recorded in batches.
    """
    now = now or utcnow()
    report = Report()
    with runtime.sessions.begin() as session:
        # The chats first, in id order, then the messages: the order an opt-out takes
        # them (its chat, then the messages it drops), so the two never deadlock.
        claimed = one_of(runtime.engine.dialect, Message.id, claim.ids)
        chat_ids = select(Message.chat_id).where(claimed).scalar_subquery()
        session.execute(
            select(Chat.id).where(Chat.id.in_(chat_ids)).order_by(Chat.id).with_for_update()
        )
        messages = session.scalars(
            select(Message)
            .where(
                claimed,
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
        batch = load_batch(session, messages, runtime, now)
        # Nothing read while deciding depends on a pending change (a new chat is
        # flushed as it is made), so flushing before every read would only cost.
        with session.no_autoflush:
            to_send = _gate_all(session, messages, batch, report, runtime)
        if batch.estimates is not None and batch.estimates.changed:
            report.add(f"estimate_{batch.estimates.mode.value}", batch.estimates.changed)
        batch.moves.write(session.connection())
    send_batch(runtime, to_send, report, BatchAnswers(runtime.policy.opt_out.scope))
    return report


class _Proposal(NamedTuple):
    """One message's decision before the limiter has had its say."""

    message: Message
    decision: Decision
    #: The send's number, should the decision be a SEND.
    attempt: int
    #: The line the message goes out on (None without one).
    line: LineFacts | None
    #: The send would start a conversation.
    new_chat: bool
    #: The message may still move to a line with room, should the limiter refuse it.
    may_reroute: bool


def _gate_all(
    session: Session,
    messages: Sequence[Message],
    batch: Batch,
    report: Report,
    runtime: Runtime,
) -> list[Send]:
    """Decide on every message of the batch, apply the decisions; returns what to send.

    A pass decides each message against the batch's view of usage, counting each send it
    passes so the next message sees it, then asks the limiter for all those sends at once.
    A message on a conversation an earlier message of the pass would start waits for the
    next pass: whether it starts the conversation itself depends on the limiter's answer
    to the earlier one.
    """
    sends: list[Send] = []
    waiting = in_turn(messages)
    while waiting:
        proposals: list[_Proposal] = []
        later: list[Message] = []
        for message in waiting:
            if message.chat_id in batch.opening:
                later.append(message)
                continue
            proposal = _propose(session, message, batch)
            if message.chat_id in batch.opening:  # rerouted onto one
                later.append(message)
                continue
            if proposal.decision.action is Action.SEND:
                batch.count(message, new_chat=proposal.new_chat)
            proposals.append(proposal)
        settled = _reserve_all(session, proposals, batch, runtime)
        # A hold on a rate rule waits its turn behind those held before it.
        batch.read_queues(session, zip((p.message for p in proposals), settled, strict=True))
        for proposal, decision in zip(proposals, settled, strict=True):
            send = _settle(proposal, batch.queue(proposal.message, decision), batch)
            report.add(decision.action.value)
            if send is not None:
                sends.append(send)
        waiting = later
    return sends


def in_turn(messages: Sequence[Message]) -> list[Message]:
    """The order a batch is decided in, so the caps' room goes to the right messages:
    higher priority first; within a priority, recipients in turn (each one's first
    message, then each one's second...), so one recipient's many messages do not take
    the room of everyone else's; then the oldest. One recipient's messages keep the
    order they came in."""
    seen: dict[tuple[int, str], int] = {}
    keyed = []
    for message in sorted(messages, key=lambda m: m.id):
        place = (message.priority, message.recipient)
        turn = seen.get(place, 0)
        seen[place] = turn + 1
        keyed.append(((-message.priority, turn, message.not_before or _EPOCH, message.id), message))
    return [message for _, message in sorted(keyed, key=lambda pair: pair[0])]


#: Sorts a message with no time first (a claimed message always has one).
_EPOCH = datetime.min.replace(tzinfo=UTC)


def _propose(session: Session, message: Message, batch: Batch) -> _Proposal:
    """The gate's decision from the batch's view, after any reroute.

    A new recipient moves off a paused line, or off a line at a cap when another line
    can take it now; existing chats never move.
    """
    attempt = message.attempts + 1
    facts = facts_for(message, batch)
    decision = decide(*facts, batch.policy, batch.now)
    no_line = facts.line is None and decision.action is Action.DEFER
    if decision.action is Action.REROUTE or no_line:
        healthy = decision.code is Code.LINE_AT_RISK
        _reroute(session, message, batch, decision, healthy=healthy)
        facts, decision = _decide_staying(message, batch)
    if (
        _capped(decision)
        and facts.message.may_reroute
        and _reroute(session, message, batch, decision, free=True)
    ):
        facts, decision = _decide_staying(message, batch)
    probing = facts.line is not None and facts.line.status is LineStatus.FLAGGED
    if probing and decision.action is Action.SEND:
        # The probe of a line healthgate flagged: this send, unless another took it.
        line = batch.lines[message.line_id or 0]
        batch.spend_probe(line.id)
        if not claim_probe(session, line, batch.policy, batch.now):
            facts, decision = _decide_staying(message, batch)
    decision = _weigh(message, facts, decision, batch)
    return _Proposal(
        message, decision, attempt, facts.line, facts.chat.is_new, facts.message.may_reroute
    )


def _weigh(message: Message, facts: Facts, decision: Decision, batch: Batch) -> Decision:
    """``decision`` beside the one the other view of health takes (the estimate's in
    shadow mode, the provider's alone in enforce mode), saying what the estimate changed.
    The other decision is taken only when the estimate is worse than the provider here.
    """
    estimates = batch.estimates
    if estimates is None:
        return decision
    provider = facts_for(message, batch, estimated=False)
    provider = provider._replace(
        message=replace(provider.message, may_reroute=facts.message.may_reroute)
    )
    line_id, chat_id = message.line_id, message.chat_id
    if not estimates.raises(provider.line, line_id, provider.chat, chat_id):
        return decision
    if estimates.enforced:
        other_facts = provider
    else:
        other_facts = provider._replace(
            chat=estimates.raise_chat(provider.chat, chat_id),
            line=None if provider.line is None else estimates.raise_line(provider.line, line_id),
        )
    other = decide(*other_facts, batch.policy, batch.now)
    said = (
        None if provider.line is None else provider.line.reputation.value,
        provider.chat.health.value,
    )
    return estimates.note(decision, other, line_id, chat_id, said)


def _decide_staying(message: Message, batch: Batch) -> tuple[Facts, Decision]:
    """The gate's facts and decision for a message that may not move again."""
    facts = facts_for(message, batch)
    facts = facts._replace(message=replace(facts.message, may_reroute=False))
    return facts, decide(*facts, batch.policy, batch.now)


def _capped(decision: Decision) -> bool:
    return decision.action is Action.THROTTLE and decision.code in CAP_CODES.values()


def _reserve_all(
    session: Session,
    proposals: Sequence[_Proposal],
    batch: Batch,
    runtime: Runtime,
) -> list[Decision]:
    """Each proposal's final decision, its send consumed from the shared limiter.

    The gate checked the batch's view of usage; the limiter re-checks every cap of every
    send against the count all workers share, in one call. A send it refuses is
    throttled to when it fits, or, for a new recipient, moved to a line with room now.
    """
    asked = {
        i: _request(p.message, p.attempt, p.line, p.new_chat, batch)
        for i, p in enumerate(proposals)
        if p.decision.action is Action.SEND and p.line is not None
    }
    answers = runtime.limiter.hit_many(session, list(asked.values()), batch.now)
    verdicts = dict(zip(asked, answers, strict=True))
    decisions = []
    for i, p in enumerate(proposals):
        verdict = verdicts.get(i)
        if verdict is None or verdict.allowed_at <= batch.now or p.line is None:
            decisions.append(p.decision)
            continue
        # A refused send starts no conversation; its usage stays counted (on the safe
        # side: the batch's later messages were decided with it).
        batch.settle_opening(p.message.chat_id)
        refused = throttled(verdict, p.line.number, asked[i][1], p.message.expires_at)
        decisions.append(_elsewhere(session, p, refused, batch, runtime))
    return decisions


def _request(
    message: Message, attempt: int, line: LineFacts, new_chat: bool, batch: Batch
) -> tuple[Ticket, Limits]:
    """What the limiter is asked for one send: its ticket, and the caps its category
    may use on its line now."""
    ticket = Ticket(message.id, attempt, line.number, message.recipient, new_chat)
    return ticket, limits_of(line, message.category, batch.policy, batch.now)


def _elsewhere(
    session: Session,
    proposal: _Proposal,
    refused: Decision,
    batch: Batch,
    runtime: Runtime,
) -> Decision:
    """A new recipient the limiter refused, sent on a line with room now if one has it."""
    message = proposal.message
    if not proposal.may_reroute or not _reroute(session, message, batch, refused, free=True):
        return refused
    if message.chat_id in batch.opening:
        # Another message of the pass would start that conversation: not now.
        return refused
    facts, decision = _decide_staying(message, batch)
    if decision.action is Action.SEND and facts.line is not None:
        request = _request(message, proposal.attempt, facts.line, facts.chat.is_new, batch)
        decision = _reserve(session, message, request, batch, runtime)
        if decision.action is Action.SEND:
            batch.count(message, new_chat=facts.chat.is_new)
    return decision


def _settle(proposal: _Proposal, decision: Decision, batch: Batch) -> Send | None:
    """Apply ``decision`` to the message; what to send, if it is a SEND."""
    message = proposal.message
    line = batch.lines.get(message.line_id) if message.line_id is not None else None
    batch.moves.decide(message, decision, line.number if line else None, proposal.attempt)
    batch.settle_opening(message.chat_id)
    if decision.action is not Action.SEND or message.line_id is None or message.chat_id is None:
        return None
    line, chat = batch.lines[message.line_id], batch.chats[message.chat_id]
    if chat.first_sent_at is None:
        # Seen by the rest of the batch at once; written with the batch's rows.
        set_committed_value(chat, "first_sent_at", batch.now)
        batch.moves.start(chat.id)
    return Send.of(message, line, chat)


def _reserve(
    session: Session,
    message: Message,
    request: tuple[Ticket, Limits],
    batch: Batch,
    runtime: Runtime,
) -> Decision:
    """Consume one send from the global limiter; THROTTLE, naming the cap, when it is full."""
    ticket, limits = request
    verdict = runtime.limiter.hit(session, ticket, limits, batch.now)
    if verdict.allowed_at <= batch.now:
        return fit_to_send()
    return throttled(verdict, ticket.line, limits, message.expires_at)


def _reroute(
    session: Session,
    message: Message,
    batch: Batch,
    decision: Decision,
    *,
    free: bool = False,
    healthy: bool = False,
) -> bool:
    """Move a new recipient to the best line that may take one; False when there is none.

    With ``free``, only to a line with room under every cap now; with ``healthy``, only
    to a HEALTHY line (moving between AT_RISK lines would gain nothing).
    """
    if message.pinned:
        return False
    # Ranked from the batch's usage, which already counts the batch's own sends: the
    # same order a fresh read of the store gives, without reading it per reroute.
    candidates = eligible_lines(sorted(batch.lines.values(), key=lambda x: x.id), batch.policy)
    missing = [line for line in candidates if line.id not in batch.usage]
    if missing:
        batch.load_usage(session, missing)
    choices = [
        choice.line
        for choice in rank(candidates, batch.usage, batch.policy, batch.now)
        if choice.line.id != message.line_id
        and (not free or choice.allowed_at <= batch.now)
        and (not healthy or choice.line.reputation == LineReputation.HEALTHY.value)
    ]
    if not choices:
        return False
    line = choices[0]
    chat = chat_for(session, line, message.recipient, batch.now)
    batch.add_chat(chat)
    message.line_id, message.chat_id = line.id, chat.id
    batch.moves.reroute(message, decision, line.number)
    return True


def drain(runtime: Runtime, now: datetime | None = None, batch: int | None = None) -> Report:
    """Dispatch everything due at ``now`` in this process, then return (scripts, cron, tests).

    A policy changed since it was last applied first releases what it no longer holds, as
    the tick does: a deployment that only drains (cron, scripts) sees its changes too.
    """
    report = Report()
    size = batch or runtime.settings.dispatch_batch
    with runtime.sessions.begin() as session:
        apply_policy_change(session, runtime.policies.loaded(), now or utcnow(), DRAIN_WORKER)
    while True:
        moment = now or utcnow()
        claim = claim_due(runtime, moment, size)
        if not claim.ids:
            return report
        report.merge(dispatch_claimed(runtime, claim, moment))
