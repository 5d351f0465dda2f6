"""Storing a call's messages part by part: their rows, new chats and first decisions."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.config import Policy
from policies.content import body_digest
from policies.errors import InvalidInput
from policies.statuses import Action
from scheduler.constants import ENQUEUE_PART
from scheduler.intake.lookups import KnownChat, Reads, Written, answer, ask
from scheduler.intake.messages import NewRow, Valid
from scheduler.store import transitions
from scheduler.store.bulk import columns_of, insert_columns, pipelined, rows_by_key
from scheduler.store.models import Chat, Line, Message
from scheduler.store.router import NewRecipients, sticky_chats

_MESSAGES = cast(Table, Message.__table__)
_CHATS = cast(Table, Chat.__table__)


#: Orders ids made in one millisecond.
_sequence = itertools.count()


def new_message_ids(count: int) -> list[str]:
    """``count`` unique ids that sort in enqueue order: milliseconds, a counter, then
    randomness (read at once for all of them).

    Dispatch goes in id order, so messages of one chat leave in the order they came.
    """
    millis = time.time_ns() // 1_000_000
    noise = os.urandom(7 * count).hex()
    return [
        f"msg_{millis:012x}{next(_sequence) % 0x1000000:06x}{noise[14 * i : 14 * i + 14]}"
        for i in range(count)
    ]


class Call(NamedTuple):
    """What the transactions of one enqueue call share."""

    #: The lines of the call's new recipients: usage read once, assignments counted.
    router: NewRecipients
    #: Every line's number by id, to compare a repeat with a stored message.
    line_numbers: dict[int, str]


def store_all(
    session: Session,
    items: Sequence[Valid],
    declared: Mapping[str, Line],
    call: Call,
    policy: Policy,
    now: datetime,
) -> list[str]:
    """Store the validated ``items`` a part at a time, in the caller's transaction.

    A part's look-ups are asked, their answers read, its rows built and written. On
    PostgreSQL, with several parts, what is sent to the server is not waited for at
    once: while it writes one part and answers the look-ups of the part after next,
    the next part's rows are built. An error in a later part aborts the transaction, so
    none of ``items`` is stored all the same.
    """
    parts = [items[start : start + ENQUEUE_PART] for start in range(0, len(items), ENQUEUE_PART)]

    def part(k: int) -> Sequence[Valid]:
        return parts[k] if k < len(parts) else []

    connection = session.connection()
    ids: list[str] = []
    written = Written({}, {})
    numbers = call.line_numbers
    items = part(0)
    first = answer(
        session, items, ask(session, items, declared, policy), declared, written, numbers
    )
    rows = _rows(session, items, first, declared, call, written, policy, now)
    upcoming = part(1)
    asked = ask(session, upcoming, declared, policy)
    for k in range(len(parts)):
        with pipelined(connection) if len(parts) > 1 else nullcontext():
            _write(connection, rows, now)
            written.add(rows.messages, rows.chats)
            ids += rows.ids
            after = part(k + 2)
            following = ask(session, after, declared, policy)
            reads = answer(session, upcoming, asked, declared, written, numbers)
            built = (
                _rows(session, upcoming, reads, declared, call, written, policy, now)
                if reads.settled
                else None
            )
        # Rows whose building queries the store (to route a message without a line,
        # say) are built once the pipeline has ended: queries cannot wait inside it.
        if built is None:
            built = _rows(session, upcoming, reads, declared, call, written, policy, now)
        rows = built
        upcoming, asked = after, following
    return ids


class _Rows(NamedTuple):
    """A part's rows to write, and the ids its messages have."""

    ids: list[str]
    #: The chats the part creates, with the ids they have.
    chats: list[KnownChat]
    #: Whether those are written already (where the store gives no ids ahead).
    chats_written: bool
    messages: list[NewRow]
    decisions: list[transitions.DecisionRow]


def _rows(
    session: Session,
    items: Sequence[Valid],
    reads: Reads,
    declared: Mapping[str, Line],
    call: Call,
    written: Written,
    policy: Policy,
    now: datetime,
) -> _Rows:
    """The rows that store the messages of ``items`` whose keys are new, and their ids
    (a known key's id for the others)."""
    known, opted_out = reads.known, reads.opted_out
    pinned, chats, chats_written = _pinned_chats(session, reads, now)
    routed = _route_all(session, items, reads, declared, call.router, written, now)
    ids: list[str] = []
    messages: list[NewRow] = []
    decisions: list[transitions.DecisionRow] = []
    fresh = iter(new_message_ids(len(items)))
    for index, item in enumerate(items):
        if item.idempotency_key and item.idempotency_key in known:
            ids.append(known[item.idempotency_key])
            continue
        place: _Place = pinned[(item.line, item.to)] if item.line else routed[index]
        line, chat_id, chat_opted_out = place
        message, decision = _new_row(
            next(fresh), item, line, chat_id, policy, now, chat_opted_out or item.to in opted_out
        )
        messages.append(message)
        if decision is not None:
            decisions.append(decision)
        if item.idempotency_key:
            known[item.idempotency_key] = message.id
        ids.append(message.id)
    return _Rows(ids, chats, chats_written, messages, decisions)


def _write(connection: Connection, rows: _Rows, now: datetime) -> None:
    """Many rows a statement (executemany, or rows from arrays), not a flush a message."""
    if rows.chats and not rows.chats_written:
        insert_columns(
            connection,
            _CHATS,
            columns_of(_CHAT_COLUMNS, [chat[:4] for chat in rows.chats]),
            {"health": "HEALTHY", "created_at": now},
        )
    if rows.messages:
        insert_columns(
            connection,
            _MESSAGES,
            columns_of(NewRow._fields, rows.messages),
            {"attempts": 0, "created_at": now, "updated_at": now},
        )
    transitions.write_decisions(connection, rows.decisions)
    # A message dropped as it came (its recipient opted out) is finished already.
    transitions.settle(
        connection, [(m.id, m.state, m.last_code, m.last_reason) for m in rows.messages], now
    )


#: The columns of a new chat's row, in ``KnownChat``'s order.
_CHAT_COLUMNS = ("id", "line_id", "recipient", "provider_chat_id")


def _pinned_chats(
    session: Session, reads: Reads, now: datetime
) -> tuple[dict[tuple[str | None, str], tuple[Line, int, bool]], list[KnownChat], bool]:
    """The line, chat id and chat opt-out of every (line, recipient) pair that messages
    naming their line go to; the chats among them that are new; whether those are
    already written.

    ``found`` chats are kept as stored (given a provider chat id they lacked). The
    others have ids from the chats' sequence (see ``ask``), so that they are written
    with the messages, not waited for; where the store gives none ahead (SQLite) they
    are inserted here, in one statement.
    """
    found, wanted = reads.found, reads.wanted
    chats = {key: (row.id, row.opted_out_at is not None) for key, row in found.items()}
    new: list[tuple[int, str, str | None]] = []
    for (line_id, recipient), provider_chat_id in wanted.items():
        existing = found.get((line_id, recipient))
        if existing is None:
            new.append((line_id, recipient, provider_chat_id))
        elif provider_chat_id and existing.provider_chat_id is None:
            session.execute(
                update(Chat).where(Chat.id == existing.id).values(provider_chat_id=provider_chat_id)
            )
    numbered = all((line_id, recipient) in reads.new_ids for line_id, recipient, _ in new)
    if numbered:
        ids = {pair: reads.new_ids[pair] for pair in wanted if pair not in found}
    else:
        created = insert_columns(
            session.connection(),
            _CHATS,
            columns_of(_CHAT_COLUMNS[1:], new),
            {"health": "HEALTHY", "created_at": now},
            ("id", "line_id", "recipient"),
        )
        ids = {(chat.line_id, chat.recipient): chat.id for chat in created}
    made = [KnownChat(ids[(line, to)], line, to, chat_id, None) for line, to, chat_id in new]
    chats.update(((chat.line_id, chat.recipient), (chat.id, False)) for chat in made)
    by_id = {line.id: (number, line) for number, line in reads.lines.items()}
    pinned: dict[tuple[str | None, str], tuple[Line, int, bool]] = {
        (by_id[line_id][0], recipient): (by_id[line_id][1], chat_id, opted_out)
        for (line_id, recipient), (chat_id, opted_out) in chats.items()
    }
    return pinned, made, not numbered


def _new_row(
    message_id: str,
    item: Valid,
    line: Line | None,
    chat_id: int | None,
    policy: Policy,
    now: datetime,
    opted_out: bool,
) -> tuple[NewRow, transitions.DecisionRow | None]:
    """The message's row and its first decision's, if the enqueue decided anything."""
    action, code, reason = transitions.ENQUEUED
    not_before: datetime | None = item.send_at or now
    # A plain enqueue's decision says until when only when send_at delays it.
    decided_until = item.send_at
    if opted_out:
        # Later enqueues to an opted-out chat are dropped at once, with that reason.
        not_before, decided_until = None, None
        action, code, reason = Action.DROP, Code.CHAT_OPTED_OUT, "the recipient opted out"
    elif line is None:
        # Waiting for a line is no health hold: it does not count towards the maximum.
        deadline = now + policy.chat.max_hold
        not_before = min(deadline, item.expires_at) if item.expires_at else deadline
        decided_until = not_before
        action, code = Action.DEFER, Code.NO_LINE
        reason = "no line may take a new recipient now (all CRITICAL, FLAGGED or AT_RISK)"
    message = NewRow(
        message_id,
        item.idempotency_key,
        line.id if line else None,
        chat_id,
        item.line is not None,
        item.to,
        item.body,
        body_digest(item.body),
        item.category,
        policy.categories[item.category].priority,
        item.recipient_tz,
        item.send_at,
        item.expires_at,
        *transitions.entry(action, code, reason, not_before),
    )
    if item.line is not None and action is Action.ENQUEUE:
        # Queued on the line the application named: nothing was decided, and the
        # message's row keeps all an enqueue record would (explain shows it first).
        return message, None
    number = line.number if line else None
    decision = transitions.record(
        message_id, action, code, reason, now, not_before=decided_until, line=number
    )
    return message, decision


#: Where a message goes: its line (None: no line may take it now), its chat's id and
#: whether that chat is opted out.
_Place = tuple[Line | None, int | None, bool]


def _route_all(
    session: Session,
    items: Sequence[Valid],
    reads: Reads,
    declared: Mapping[str, Line],
    router: NewRecipients,
    written: Written,
    now: datetime,
) -> dict[int, _Place]:
    """Where each message of ``items`` that names no line goes, by its index: the chat
    its chat id names, else the recipient's conversation, else a line the router
    chooses. A handful of reads for the whole part, however many messages it holds."""
    routed = [
        (index, item)
        for index, item in enumerate(items)
        if item.line is None and item.idempotency_key not in reads.known
    ]
    if not routed:
        return {}
    named = {item.chat_id for _, item in routed if item.chat_id is not None}
    by_chat_id = (
        {
            row.provider_chat_id: row
            for row in session.execute(
                select(
                    Chat.provider_chat_id, Chat.id, Chat.line_id, Chat.recipient, Chat.opted_out_at
                ).where(Chat.provider_chat_id.in_(named))
            )
        }
        if named
        else {}
    )
    sticky = sticky_chats(session, {item.to for _, item in routed})
    by_id = {line.id: line for line in declared.values()}

    def line_of(line_id: int) -> Line:
        return by_id.get(line_id) or session.get_one(Line, line_id)

    places: dict[int, _Place] = {}
    pending: list[tuple[int, Valid, Line]] = []
    for index, item in routed:
        row = by_chat_id.get(item.chat_id) if item.chat_id is not None else None
        if row is not None:
            if row.recipient != item.to:
                field = f"{item.where}chat_id"
                raise InvalidInput(field, item.chat_id, f"is a chat with {row.recipient}")
            places[index] = (line_of(row.line_id), row.id, row.opted_out_at is not None)
            continue
        found = sticky.get(item.to)
        if found is not None:
            places[index] = (line_of(found.line_id), found.id, found.opted_out_at is not None)
            continue
        line = router.line_for(session, item.to, declared.values())
        if line is None:
            places[index] = (None, None, False)
        else:
            pending.append((index, item, line))
    chats = _chats_of(
        session, [(line.id, item.to, item.chat_id) for _, item, line in pending], written, now
    )
    for index, item, line in pending:
        chat_id, opted_out = chats[(line.id, item.to)]
        places[index] = (line, chat_id, opted_out)
    return places


def _chats_of(
    session: Session,
    wanted: Sequence[tuple[int, str, str | None]],
    written: Written,
    now: datetime,
) -> dict[tuple[int, str], tuple[int, bool]]:
    """The chat's id and opt-out of each (line id, recipient, provider chat id) of
    ``wanted``: stored, made earlier in the call, or created here in one statement (with
    the provider chat id, which a stored chat that lacked one is given)."""
    given: dict[tuple[int, str], str | None] = {}
    for line_id, recipient, chat_id in wanted:
        if chat_id is not None or (line_id, recipient) not in given:
            given[(line_id, recipient)] = chat_id
    if not given:
        return {}
    stored = rows_by_key(
        session.connection(),
        _CHATS,
        ("line_id", "recipient"),
        [pair for pair in given if pair not in written.chats],
        ("id", "line_id", "recipient", "provider_chat_id", "opted_out_at"),
    )()
    found: dict[tuple[int, str], Any] = {(row.line_id, row.recipient): row for row in stored}
    found |= {pair: written.chats[pair] for pair in given if pair in written.chats}
    for pair, chat_id in given.items():
        existing = found.get(pair)
        if existing is not None and chat_id and existing.provider_chat_id is None:
            session.execute(
                update(Chat).where(Chat.id == existing.id).values(provider_chat_id=chat_id)
            )
    new = [
        (line_id, recipient, given[(line_id, recipient)])
        for line_id, recipient in given
        if (line_id, recipient) not in found
    ]
    created = (
        insert_columns(
            session.connection(),
            _CHATS,
            columns_of(_CHAT_COLUMNS[1:], new),
            {"health": "HEALTHY", "created_at": now},
            ("id", "line_id", "recipient"),
        )
        if new
        else []
    )
    chats = {pair: (row.id, row.opted_out_at is not None) for pair, row in found.items()}
    for row in created:
        chats[(row.line_id, row.recipient)] = (row.id, False)
        written.chats[(row.line_id, row.recipient)] = KnownChat(
            row.id, row.line_id, row.recipient, given[(row.line_id, row.recipient)], None
        )
    return chats
