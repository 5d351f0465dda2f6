"""The store's view of one claimed batch: lines, chats, usage and the facts the gate reads."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.config import OptOutScope, Policy
from policies.decision import Decision, Queue
from policies.gate import ChatFacts, LineFacts, MessageFacts, limits_for
from policies.hours import rules_of
from policies.pace import LINE_WIDE, Limits, scaled
from policies.statuses import Action, ChatHealth
from policies.usage import LineUsage
from scheduler.dispatch.estimates import Estimates, at_risk_chats, load_estimates
from scheduler.limits import Limiter
from scheduler.runtime import Runtime
from scheduler.store.lines import line_facts, next_probe
from scheduler.store.models import Chat, Line, Message, OptOut
from scheduler.store.queues import QueueKey, queue_ends
from scheduler.store.transitions import Moves
from scheduler.store.usage import load_bodies, load_usage


@dataclass
class Batch:
    """The store's view of one batch while it is being decided; it changes only through
    its methods (and ``moves``, which owns what the decisions write)."""

    policy: Policy
    now: datetime
    lines: dict[int, Line]
    chats: dict[int, Chat]
    opted_out: set[str]
    usage: dict[int, LineUsage]
    unanswered: dict[int, tuple[datetime, ...]]
    #: What the batch's decisions leave: rows written together before its commit.
    moves: Moves
    #: Dispatch times of each body digest to each AT_RISK chat, for the repeat rule.
    same_body: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)
    #: Chats a send passed by the gate would start, while the limiter has not answered.
    opening: set[int] = field(default_factory=set)
    #: Lines whose one probe send the batch has decided on (taken, or lost to another).
    probed: set[int] = field(default_factory=set)
    #: The body digests the batch sends: the content rule's counts it loads.
    digests: frozenset[str] = frozenset()
    #: Messages in the batch: at most this many sends on any one line.
    size: int = 0

    #: Each line's recipients in the batch.
    recipients_by_line: dict[int, frozenset[str]] = field(default_factory=dict)
    #: New recipients whose line the router chose: they may move to another line.
    movable: frozenset[str] = frozenset()
    #: Recipients with one message in the batch (see ``Limiter.windows``).
    single: frozenset[str] = frozenset()
    limiter: Limiter | None = None
    #: The smallest share of the caps a message of the batch may use (``cap_share``).
    share: float = 1.0
    #: The end of each queue of held messages the batch holds messages on, once read.
    queue_ends: dict[QueueKey, datetime | None] = field(default_factory=dict)
    #: healthgate's own estimate of the batch's lines and chats (None when it is off).
    estimates: Estimates | None = None

    def read_queues(self, session: Session, held: Iterable[tuple[Message, Decision]]) -> None:
        """Read where the queues ``held`` messages join end, those not read yet."""
        keys = {key for m, d in held if (key := _queue(m, d)) and key not in self.queue_ends}
        if keys:
            ends = queue_ends(session, keys)
            self.queue_ends.update((key, ends.get(key)) for key in keys)

    def queue(self, message: Message, decision: Decision) -> Decision:
        """``decision``, a hold on a rate rule joining the end of its queue: one pace
        after the message before it, and never before the rule allows (read the
        queue's end with ``read_queues`` first)."""
        key = _queue(message, decision)
        if key is None or decision.pace is None or decision.not_before is None:
            return decision
        end = self.queue_ends[key]
        turn = (
            decision.not_before
            if end is None
            else max(decision.not_before, end + decision.pace.interval)
        )
        if message.expires_at is not None and turn >= message.expires_at:
            # It expires before its turn: it takes no place in the queue.
            return replace(decision, not_before=message.expires_at)
        self.queue_ends[key] = turn
        return replace(decision, not_before=turn)

    def count(self, message: Message, *, new_chat: bool) -> None:
        """Count a send the gate passed in the batch's view, so the messages after it
        see it: the line's usage, the chat's unanswered sends, the repeat rule."""
        if message.line_id is None or message.chat_id is None:
            return
        chat = self.chats[message.chat_id]
        if new_chat:
            # Its conversation starts if the limiter lets this send go; until then no
            # other message of the batch is decided on the chat.
            self.opening.add(chat.id)
        self.usage.setdefault(message.line_id, LineUsage()).record(
            message.recipient, self.now, new_chat=new_chat, body_hash=message.body_hash
        )
        digest = message.body_hash
        if digest is not None and (chat.id, digest) in self.same_body:
            self.same_body[(chat.id, digest)].append(self.now)
        elif digest is not None and self._at_risk(chat):
            self.same_body[(chat.id, digest)] = [self.now]
        if chat.id in self.unanswered:
            self.unanswered[chat.id] = (*self.unanswered[chat.id], self.now)

    def _at_risk(self, chat: Chat) -> bool:
        if chat.health == ChatHealth.AT_RISK.value:
            return True
        estimate = self.estimates.chat(chat.id) if self.estimates else None
        return estimate is not None and estimate.status.value == ChatHealth.AT_RISK.value

    def settle_opening(self, chat_id: int | None) -> None:
        """The limiter answered the send that would start ``chat_id``'s conversation."""
        self.opening.discard(chat_id or 0)

    def spend_probe(self, line_id: int) -> None:
        """The batch decided on the probe of a line healthgate flagged (see ``_line``)."""
        self.probed.add(line_id)

    def add_chat(self, chat: Chat) -> None:
        """A chat the batch made (a new recipient moved to another line)."""
        self.chats[chat.id] = chat

    def load_usage(self, session: Session, lines: Sequence[Line]) -> None:
        """Add the usage of ``lines`` for this batch's messages (a reroute needs more: a
        line messages may move to is read for the recipients that may move)."""
        whom = {line.id: self.recipients_by_line.get(line.id, self.movable) for line in lines}
        self.usage.update(
            batch_usage(
                session,
                lines,
                self.policy,
                self.now,
                self.size,
                whom,
                self.digests,
                self.limiter,
                self.single,
                self.share,
                self.estimates,
            )
        )


def _queue(message: Message, decision: Decision) -> QueueKey | None:
    """The queue a hold on a rate rule puts ``message`` in (None for any other decision)."""
    if decision.action is not Action.THROTTLE or decision.pace is None or message.line_id is None:
        return None
    chat = message.chat_id if decision.pace.queue is Queue.CHAT else None
    return QueueKey(decision.code, message.line_id, chat, message.priority)


def load_batch(
    session: Session, messages: Sequence[Message], runtime: Runtime, now: datetime
) -> Batch:
    """Load and lock what deciding ``messages`` needs: chats in id order, line usage, facts."""
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
    movable = frozenset(
        m.recipient for m in messages if not m.pinned and is_new_chat(chats.get(m.chat_id or 0))
    )
    runtime.limiter.lock(session, sorted(lines) if movable else [line.id for line in used])
    enabled = [line for line in lines.values() if line.enabled]
    estimates = load_estimates(session, enabled, chats, policy, now, runtime.engine)
    at_risk = at_risk_chats(chats, estimates)
    batch = Batch(
        policy,
        now,
        lines,
        chats,
        opted_out,
        {},
        _unanswered(session, chats, at_risk, policy, now),
        Moves(now),
        _same_body(session, chats, at_risk, messages, policy, now),
        digests=frozenset(m.body_hash for m in messages if m.body_hash is not None),
        size=len(messages),
        recipients_by_line=_recipients_by_line(messages),
        movable=movable,
        single=_single(messages),
        limiter=runtime.limiter,
        share=min(rules_of(policy, m.category).cap_share for m in messages),
        estimates=estimates,
    )
    batch.load_usage(session, used)
    return batch


def _single(messages: Sequence[Message]) -> frozenset[str]:
    """The recipients with one message in the batch."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for message in messages:
        (repeated if message.recipient in seen else seen).add(message.recipient)
    return frozenset(seen - repeated)


def is_new_chat(chat: Chat | None) -> bool:
    """Nothing was said on the chat yet, by either side: a send starts a new conversation.

    A chat the recipient started is theirs: an answer goes on the line they wrote to
    and is no new conversation.
    """
    return chat is None or (chat.first_sent_at is None and chat.first_inbound_at is None)


def batch_usage(
    session: Session,
    lines: Sequence[Line],
    policy: Policy,
    now: datetime,
    headroom: int,
    recipients: Mapping[int, Collection[str]],
    digests: Collection[str] = (),
    limiter: Limiter | None = None,
    single: Collection[str] = (),
    share: float = 1.0,
    estimates: Estimates | None = None,
) -> dict[int, LineUsage]:
    """Usage of ``lines`` under each line's caps as they apply at ``now``, for up to
    ``headroom`` sends to ``recipients`` (by line id) with bodies of ``digests``, by
    messages that may use ``share`` of each line-wide cap.

    The caps' windows come from the limiter when it keeps them (it is the count every
    worker shares), else from the store; the content rule's from the store. Under an
    enforced estimate a line's caps are those of the status the gate will see.
    """
    limits = {line.id: limits_for(_seen(line, estimates), policy, now) for line in lines}
    # A category that may use only a share of a cap reaches it sooner: its times are
    # needed that much earlier.
    headroom += kept_back(limits.values(), share)
    body_limit = policy.content.same_body_max_recipients_per_hour
    numbers = {line.id: line.number for line in lines}
    windows = (
        limiter.windows(numbers, limits, now, headroom, recipients, single) if limiter else None
    )
    everyone = set().union(*recipients.values()) if recipients else set()
    if windows is None:
        return load_usage(session, lines, limits, now, headroom, everyone, digests, body_limit)
    if digests:
        load_bodies(session, windows, digests, now, headroom, body_limit, everyone)
    return windows


def kept_back(limits: Iterable[Limits], share: float) -> int:
    """The most a category that may use ``share`` of them leaves of the line-wide caps."""
    if share >= 1:
        return 0
    return max(
        (
            getattr(each, cap) - scaled(getattr(each, cap), share)
            for each in limits
            for cap in LINE_WIDE
        ),
        default=0,
    )


def _seen(line: Line, estimates: Estimates | None) -> LineFacts:
    facts = line_facts(line)
    return estimates.raise_line(facts, line.id) if estimates and estimates.enforced else facts


def _recipients_by_line(messages: Sequence[Message]) -> dict[int, frozenset[str]]:
    found: dict[int, set[str]] = {}
    for message in messages:
        if message.line_id is not None:
            found.setdefault(message.line_id, set()).add(message.recipient)
    return {line_id: frozenset(whom) for line_id, whom in found.items()}


def _same_body(
    session: Session,
    chats: dict[int, Chat],
    at_risk: Collection[int],
    messages: Sequence[Message],
    policy: Policy,
    now: datetime,
) -> dict[tuple[int, str], list[datetime]]:
    """When each batch body digest went to each AT_RISK chat since its last reply.

    These are the repeat rule's facts: a reply lifts the rule, as it lifts the throttle.
    """
    digests = {m.body_hash for m in messages if m.body_hash is not None}
    found: dict[tuple[int, str], list[datetime]] = {}
    if not at_risk or not digests:
        return found
    rows = session.execute(
        select(Message.chat_id, Message.body_hash, Message.dispatched_at).where(
            Message.chat_id.in_(sorted(at_risk)),
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
    session: Session,
    chats: dict[int, Chat],
    at_risk: Collection[int],
    policy: Policy,
    now: datetime,
) -> dict[int, tuple[datetime, ...]]:
    """Dispatch times since the last reply, for AT_RISK chats (the only ones that need it)."""
    found: dict[int, list[datetime]] = {chat_id: [] for chat_id in sorted(at_risk)}
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


def _line(line: Line, batch: Batch) -> LineFacts:
    probe_at = next_probe(line, batch.policy)
    if probe_at is not None and line.id in batch.probed:
        # The batch spent the line's probe: the next one comes an interval from now.
        probe_at = batch.now + batch.policy.line.probe_after
    return line_facts(line, probe_at)


class Facts(NamedTuple):
    """The gate's inputs for one message, in ``decide``'s order."""

    message: MessageFacts
    chat: ChatFacts
    #: None while no line may take the (new) recipient.
    line: LineFacts | None
    usage: LineUsage


def facts_for(message: Message, batch: Batch, *, estimated: bool | None = None) -> Facts:
    """The gate's inputs for one message, from the batch: with the estimate where it is
    enforced (``estimated`` None), with it (True) or as the provider alone says (False)."""
    line = batch.lines.get(message.line_id) if message.line_id is not None else None
    chat = batch.chats.get(message.chat_id) if message.chat_id is not None else None
    is_new = is_new_chat(chat)
    health = ChatHealth(chat.health) if chat else ChatHealth.HEALTHY
    if chat is not None and chat.opted_out_at is not None:
        health = ChatHealth.OPTED_OUT
    facts = Facts(
        MessageFacts(
            recipient=message.recipient,
            expires_at=message.expires_at,
            held_since=message.held_since,
            may_reroute=not message.pinned and is_new,
            body_hash=message.body_hash,
            category=message.category,
            recipient_tz=message.recipient_tz,
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
        None if line is None or not line.enabled else _line(line, batch),
        batch.usage.get(line.id, LineUsage()) if line else LineUsage(),
    )
    estimates = batch.estimates
    if estimates is None or not (estimates.enforced if estimated is None else estimated):
        return facts
    return facts._replace(
        chat=estimates.raise_chat(facts.chat, message.chat_id),
        line=None if facts.line is None else estimates.raise_line(facts.line, message.line_id),
    )
