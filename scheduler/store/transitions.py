"""The one owner of a message's states: every move it may make, the only writer of its
state and of the decisions recorded on it, and which signals release which holds.

Every module that moves a message asks this one: enqueue, claims, the gate pass,
sending, reconciliation, opt-outs and releases. A move that the table does not hold
raises ``IllegalMove`` instead of writing a state nothing expects.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import ColumnElement, Connection, Table, and_, bindparam, func, select, update
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.decision import Decision
from policies.errors import HealthgateError
from policies.statuses import Action
from scheduler import metrics
from scheduler.store import outcomes
from scheduler.store.bulk import columns_of, insert_columns, update_rows
from scheduler.store.models import (
    CANCELLABLE_STATES,
    FINAL_STATES,
    RETRYABLE_STATES,
    WAITING_STATES,
    Chat,
    DecisionRecord,
    Message,
    MessageState,
)

#: Where a message comes from when it is being enqueued: no state yet.
NEW = None


class Transition(NamedTuple):
    """One row of the table: ``action`` moves a message from one of ``sources`` to
    ``target``."""

    sources: frozenset[MessageState | None]
    action: Action
    target: MessageState


def _row(
    sources: Iterable[MessageState | None], action: Action, target: MessageState
) -> Transition:
    return Transition(frozenset(sources), action, target)


_S = MessageState
_WAITING = frozenset(WAITING_STATES)
#: States a message finishes in: reaching one puts it in the outbox of outcomes.
_FINAL = frozenset(state.value for state in FINAL_STATES)

#: Every move a message may make; the README's "How a message moves" is this table.
TABLE: tuple[Transition, ...] = (
    _row([NEW], Action.ENQUEUE, _S.QUEUED),
    _row([*_WAITING], Action.CLAIM, _S.CLAIMED),
    # A lease that ran out: its dispatcher died or is late, and its token no longer holds.
    _row([_S.CLAIMED], Action.REQUEUE, _S.QUEUED),
    # A new recipient moves to another line; it is then decided there.
    _row([_S.CLAIMED], Action.REROUTE, _S.CLAIMED),
    _row([_S.CLAIMED], Action.SEND, _S.SENDING),
    # After the gate, or after the provider's answer (a retry, a 429's hint).
    _row([_S.CLAIMED, _S.SENDING], Action.THROTTLE, _S.THROTTLED),
    # No line at enqueue; a paused chat or line at the gate; a line the provider blocked.
    _row([NEW, _S.CLAIMED, _S.SENDING], Action.DEFER, _S.DEFERRED),
    # An opt-out known at enqueue, at the gate, when it arrives, or in the provider's answer.
    _row([NEW, *_WAITING, _S.CLAIMED, _S.SENDING], Action.DROP, _S.DROPPED),
    _row([_S.CLAIMED], Action.EXPIRE, _S.EXPIRED),
    _row([_S.SENDING], Action.FAIL, _S.FAILED),
    # A late answer also settles a send a reconciler handed to a person.
    _row([_S.SENDING, _S.NEEDS_REVIEW], Action.SENT, _S.SENT),
    # A signal ended what held it: the gate looks at it again now.
    _row([_S.THROTTLED, _S.DEFERRED], Action.RELEASE, _S.QUEUED),
    # A send never confirmed: sent again with its key, or handed to a person.
    _row([_S.SENDING], Action.RECONCILE, _S.SENDING),
    _row([_S.SENDING], Action.RECONCILE, _S.NEEDS_REVIEW),
    # Asked for by a person or a program; a claimed message is locked from its
    # dispatcher first, so it is cancelled or sent, never both.
    _row([*CANCELLABLE_STATES], Action.CANCEL, _S.CANCELLED),
    # A person looked at why it failed: the gate decides again, the same key goes out.
    _row([*RETRYABLE_STATES], Action.RETRY, _S.QUEUED),
)

#: Moves kept on the message alone: a lease says all there is to say.
UNRECORDED = frozenset({Action.CLAIM, Action.REQUEUE})

_TARGETS: dict[tuple[Action, MessageState | None], tuple[MessageState, ...]] = {}
for _t in TABLE:
    for _source in _t.sources:
        _TARGETS[(_t.action, _source)] = (*_TARGETS.get((_t.action, _source), ()), _t.target)

#: Holds that end when the chat is HEALTHY again (CRITICAL defers, AT_RISK throttles,
#: and the AT_RISK rule against repeated near-identical bodies).
CHAT_HOLDS = frozenset({Code.CHAT_CRITICAL, Code.CHAT_AT_RISK, Code.CONTENT_REPEATED})
#: Holds a reply from the recipient lifts.
REPLY_HOLDS = frozenset({Code.CHAT_AT_RISK, Code.CONTENT_REPEATED})
#: Holds that end when the line can send again.
LINE_HOLDS = frozenset({Code.LINE_CRITICAL, Code.LINE_FLAGGED, Code.PROVIDER_LINE_BLOCKED})
#: Holds that end when any line may take a new recipient.
ROUTE_HOLDS = frozenset({Code.NO_LINE})
#: Holds that end at their own time, which the gate computed: a cap's window, the
#: content spread rule's hour, the provider's retry hint.
TIMED_HOLDS = frozenset(
    {
        Code.CAP_SENDS_PER_MINUTE,
        Code.CAP_SENDS_PER_DAY,
        Code.CAP_SENDS_PER_RECIPIENT_PER_MINUTE,
        Code.CAP_SENDS_PER_RECIPIENT_PER_DAY,
        Code.CAP_DISTINCT_RECIPIENTS_PER_HOUR,
        Code.CAP_NEW_CONVERSATIONS_PER_DAY,
        Code.CONTENT_SAME_BODY,
        Code.PROVIDER_RATE_LIMITED,
        Code.PROVIDER_UNAVAILABLE,
        Code.PROVIDER_NO_LINE,
    }
)

#: A plain enqueue's action, code and reason: stored when the router chose the line,
#: read from the message's row when the application named it (``reports.explain``).
ENQUEUED = (Action.ENQUEUE, Code.ENQUEUED, "enqueued")


class IllegalMove(HealthgateError):
    """A move the table does not hold: a bug, never bad input."""


def target(
    action: Action, sources: Collection[MessageState | None], to: MessageState | None = None
) -> MessageState:
    """Where ``action`` takes a message from any of ``sources`` (``to`` picks one where
    the table has several, as RECONCILE does)."""
    found: set[MessageState] = set()
    for source in sources:
        targets = _TARGETS.get((action, source), ())
        chosen = [t for t in targets if to is None or t is to]
        if len(chosen) != 1:
            raise IllegalMove(f"no single move {action} from {source} to {to or 'anywhere'}")
        found.add(chosen[0])
    if len(found) != 1:
        raise IllegalMove(f"{action} from {sorted(map(str, sources))} leads to {found}")
    return found.pop()


def _state(action: Action, source: MessageState | None, to: MessageState | None) -> str:
    """The stored value of the state ``action`` takes a message to from ``source``."""
    targets = _TARGETS.get((action, source), ())
    if len(targets) == 1 and (to is None or targets[0] is to):
        return targets[0].value
    return target(action, [source], to).value


def changes(
    action: Action,
    source: MessageState | None,
    now: datetime,
    code: Code | None = None,
    reason: str | None = None,
    *,
    to: MessageState | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """A message's new columns after ``action`` from ``source``: the one place a state is
    set. ``code`` and ``reason`` become its last ones; ``columns`` go as given."""
    moved = {"state": _state(action, source, to), "updated_at": now, **columns}
    if code is not None:
        moved["last_code"], moved["last_reason"] = code, reason
    return moved


class Entry(NamedTuple):
    """A new message's first state and why, as the last columns of its row."""

    state: str
    not_before: datetime | None
    held_since: datetime | None
    last_code: Code
    last_reason: str


def entry(
    action: Action,
    code: Code,
    reason: str,
    not_before: datetime | None,
    held_since: datetime | None = None,
) -> Entry:
    """Where an enqueue puts a new message (queued, deferred or dropped), and why."""
    return Entry(_state(action, NEW, None), not_before, held_since, code, reason)


class DecisionRow(NamedTuple):
    """One decision on one message as its record's columns: the one shape all of them
    are built in, for ``explain``."""

    message_id: str
    at: datetime
    action: Action
    code: Code
    reason: str
    not_before: datetime | None
    line: str | None
    #: The same decision taken again since, counted instead of stored; the last time.
    repeats: int = 0
    last_at: datetime | None = None
    #: Who or what asked, for a decision taken by hand; None for healthgate's own.
    actor: str | None = None


def record(
    message_id: str,
    action: Action,
    code: Code,
    reason: str,
    at: datetime,
    *,
    not_before: datetime | None = None,
    line: str | None = None,
    actor: str | None = None,
) -> DecisionRow:
    """The record of one decision, ready to write with ``write_decisions``."""
    return DecisionRow(message_id, at, action, code, reason, not_before, line, actor=actor)


def decided(message_id: str, decision: Decision, at: datetime, line: str | None) -> DecisionRow:
    """The record of the gate's (or a provider answer's) ``decision``."""
    return record(
        message_id,
        decision.action,
        decision.code,
        decision.reason,
        at,
        not_before=decision.not_before,
        line=line,
    )


_MESSAGES = cast(Table, Message.__table__)
_CHATS = cast(Table, Chat.__table__)
_DECISIONS = cast(Table, DecisionRecord.__table__)


def read_decisions(session: Session, message_id: str) -> list[DecisionRow]:
    """Every decision recorded on one message, oldest first."""
    columns = [getattr(DecisionRecord, name) for name in DecisionRow._fields]
    rows = session.execute(
        select(*columns).where(DecisionRecord.message_id == message_id).order_by(DecisionRecord.id)
    )
    return [DecisionRow._make(row) for row in rows]


def write_decisions(connection: Connection, rows: Sequence[DecisionRow]) -> None:
    """Insert ``rows`` in one statement; each is counted in ``/metrics`` at commit."""
    if rows:
        insert_columns(connection, _DECISIONS, columns_of(DecisionRow._fields, rows), {})
        metrics.count_decisions(connection, ((r.action, r.code, r.line) for r in rows))


def settle(
    connection: Connection,
    moved: Iterable[tuple[str, str, str | None, str | None]],
    now: datetime,
) -> None:
    """Put each of ``moved`` (a message's id, new state, code and reason) that reached a
    final state in the outbox of outcomes, in the transaction that moved it: the
    application's callback is told of it from there (``scheduler.outcomes``)."""
    outcomes.write(
        connection,
        [
            outcomes.Settled(message_id, state, code or "", reason or "", now)
            for message_id, state, code, reason in moved
            if state in _FINAL
        ],
    )


#: The latest record of one code on one message, counted once more.
_REPEAT = (
    update(_DECISIONS)
    .where(
        _DECISIONS.c.id
        == select(func.max(_DECISIONS.c.id))
        .where(
            _DECISIONS.c.message_id == bindparam("r_message"),
            _DECISIONS.c.code == bindparam("r_code"),
        )
        .scalar_subquery()
    )
    .values(
        repeats=_DECISIONS.c.repeats + 1,
        last_at=bindparam("r_at"),
        not_before=bindparam("r_not_before"),
    )
)


def count_repeats(connection: Connection, rows: Sequence[DecisionRow]) -> None:
    """Count each of ``rows`` on the latest record of its message and code, which it
    repeats, instead of storing it again."""
    if rows:
        connection.execute(
            _REPEAT,
            [
                {
                    "r_message": row.message_id,
                    "r_code": row.code,
                    "r_at": row.at,
                    "r_not_before": row.not_before,
                }
                for row in rows
            ],
        )
        # Taken again, so counted again: ``/metrics`` counts decisions, not records.
        metrics.count_decisions(connection, ((r.action, r.code, r.line) for r in rows))


def apply(
    session: Session,
    message: Message,
    decision: Decision,
    now: datetime,
    line: str | None,
    **columns: Any,
) -> None:
    """Move one loaded message as ``decision`` says, and record it."""
    source = MessageState(message.state)
    moved = changes(
        decision.action,
        source,
        now,
        decision.code,
        decision.reason,
        not_before=decision.not_before,
        **columns,
    )
    _assign(message, moved)
    session.flush()
    connection = session.connection()
    write_decisions(connection, [decided(message.id, decision, now, line)])
    settle(connection, [(message.id, moved["state"], decision.code, decision.reason)], now)


def move_one(
    session: Session,
    message: Message,
    action: Action,
    now: datetime,
    code: Code,
    reason: str,
    *,
    line: str | None,
    to: MessageState | None = None,
    mark: bool = True,
    **columns: Any,
) -> None:
    """Move one loaded message by a lifecycle ``action`` (RECONCILE, ...), and record it;
    with ``mark``, ``code`` and ``reason`` become the message's last ones."""
    source = MessageState(message.state)
    last = (code, reason) if mark else (None, None)
    moved = changes(action, source, now, *last, to=to, **columns)
    _assign(message, moved)
    session.flush()
    connection = session.connection()
    write_decisions(connection, [record(message.id, action, code, reason, now, line=line)])
    settle(connection, [(message.id, moved["state"], code, reason)], now)


def _assign(message: Message, columns: Mapping[str, Any]) -> None:
    for name, value in columns.items():
        setattr(message, name, value)


def move_where(
    session: Session,
    action: Action,
    which: ColumnElement[bool],
    sources: Collection[MessageState],
    now: datetime,
    code: Code | None = None,
    reason: str | None = None,
    *,
    actor: str | None = None,
    **columns: Any,
) -> list[str]:
    """Move every message that ``which`` selects and that is in one of ``sources``, in
    one statement, and record each (with ``actor``, who asked, if anyone did); their
    ids."""
    moved = changes(action, next(iter(sources)), now, code, reason, **columns)
    target(action, sources)  # every source must lead where the first does
    ids = list(
        session.scalars(
            update(Message)
            .where(which, Message.state.in_([s.value for s in sources]))
            .values(moved)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        )
    )
    if action not in UNRECORDED and code is not None and reason is not None:
        write_decisions(
            session.connection(),
            [record(i, action, code, reason, now, actor=actor) for i in ids],
        )
    if moved["state"] in _FINAL:  # a claim or a release of a thousand builds no list
        settle(session.connection(), [(i, moved["state"], code, reason) for i in ids], now)
    return ids


def release(
    session: Session,
    which: ColumnElement[bool],
    holds: Collection[Code],
    now: datetime,
    code: Code,
    reason: str,
    actor: str | None = None,
) -> list[str]:
    """Look again now at held messages ``which`` selects whose hold is one of ``holds``;
    the gate (and its caps) decides what follows. Their ids.

    ``held_since`` stays: holds that follow one another add up to the maximum hold.
    """
    return move_where(
        session,
        Action.RELEASE,
        and_(which, Message.last_code.in_(sorted(holds))),
        [MessageState.DEFERRED, MessageState.THROTTLED],
        now,
        code,
        reason,
        actor=actor,
        not_before=now,
    )


class Accepted(NamedTuple):
    """A send its provider accepted."""

    message_id: str
    provider: str
    #: The provider's id for it, when it gives one.
    provider_message_id: str | None


def sent(connection: Connection, accepted: Sequence[Accepted], now: datetime) -> None:
    """Move accepted sends to SENT (each was locked SENDING or NEEDS_REVIEW by the caller)
    with one statement."""
    moving = [
        {
            "id": message_id,
            **changes(
                Action.SENT,
                MessageState.SENDING,
                now,
                Code.SENT,
                f"accepted by {provider}",
                sent_at=now,
                provider_message_id=provider_id,
            ),
        }
        for message_id, provider, provider_id in accepted
    ]
    update_rows(connection, _MESSAGES, moving)
    settle(connection, _settled(moving), now)


@dataclass
class Moves:
    """The rows a batch's decisions leave, written together before its commit: the bulk
    form of ``apply``, owned by the batch being decided."""

    now: datetime
    #: Each decided message's row as the decision leaves it.
    updates: list[dict[str, Any]] = field(default_factory=list)
    #: The decisions' records, in the order they were taken.
    decisions: list[DecisionRow] = field(default_factory=list)
    #: Holds the same as the message's last one: counted on its record, not stored.
    repeats: list[DecisionRow] = field(default_factory=list)
    #: Messages the batch moved to another line: their holds are new ones.
    moved: set[str] = field(default_factory=set)
    #: Chats the batch starts a conversation on, by id: their first send's time.
    started: dict[int, datetime] = field(default_factory=dict)

    def decide(self, message: Message, decision: Decision, line: str | None, attempt: int) -> None:
        """Leave the claimed ``message`` as ``decision`` says; ``attempt`` is the send's
        number, should it be a SEND."""
        now = self.now
        sending = decision.action is Action.SEND
        # Waiting for a line is no health hold (see ``policies.gate``).
        held = decision.action is Action.DEFER and decision.code not in ROUTE_HOLDS
        self.updates.append(
            {
                "id": message.id,
                **changes(
                    decision.action,
                    MessageState.CLAIMED,
                    now,
                    decision.code,
                    decision.reason,
                    line_id=message.line_id,
                    chat_id=message.chat_id,
                    claim_token=None,
                    lease_expires_at=None,
                    not_before=decision.not_before,
                    # Kept once set: holds that follow one another add up to the
                    # maximum hold, whatever came in between.
                    held_since=(message.held_since or now) if held else message.held_since,
                    dispatched_at=now if sending else message.dispatched_at,
                    attempts=attempt if sending else message.attempts,
                ),
            }
        )
        row = decided(message.id, decision, now, line)
        if _repeats(message, decision) and message.id not in self.moved:
            self.repeats.append(row)
        else:
            self.decisions.append(row)

    def reroute(self, message: Message, decision: Decision, line: str) -> None:
        """Record that ``message`` moved to ``line`` (written with its final decision)."""
        target(Action.REROUTE, [MessageState.CLAIMED])
        moved = Decision(Action.REROUTE, decision.code, f"{decision.reason}; moved to line {line}")
        self.decisions.append(decided(message.id, moved, self.now, line))
        self.moved.add(message.id)

    def start(self, chat_id: int) -> None:
        """The batch's send starts a conversation on ``chat_id``."""
        self.started[chat_id] = self.now

    def write(self, connection: Connection) -> None:
        """Write every row the batch's decisions leave."""
        update_rows(connection, _MESSAGES, self.updates)
        settle(connection, _settled(self.updates), self.now)
        started = [{"id": i, "first_sent_at": at} for i, at in self.started.items()]
        update_rows(connection, _CHATS, started)
        write_decisions(connection, self.decisions)
        count_repeats(connection, self.repeats)


def _settled(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str | None, str | None]]:
    """Messages' new rows as ``settle`` takes them."""
    return [(row["id"], row["state"], row.get("last_code"), row.get("last_reason")) for row in rows]


def _repeats(message: Message, decision: Decision) -> bool:
    """A hold the same as the one the message waited under: same rule, same words."""
    return (
        decision.action in (Action.THROTTLE, Action.DEFER)
        and message.last_code == decision.code
        and message.last_reason == decision.reason
    )
