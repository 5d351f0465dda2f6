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
from scheduler.intake.messages import NewMessage, NewRow, Valid, validated
from scheduler.store import transitions
from scheduler.store.bulk import columns_of, insert_columns, pipelined
from scheduler.store.lines import get_line
from scheduler.store.models import Chat, Line, Message
from scheduler.store.router import chat_for, lines_for_new_recipient, sticky_chat

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


def store_all(
    session: Session,
    given: Sequence[NewMessage | Mapping[str, Any]],
    declared: Mapping[str, Line],
    policy: Policy,
    now: datetime,
) -> list[str]:
    """Validate and store ``given`` a part at a time, in the caller's transaction.

    A part is validated, its look-ups asked, their answers read, its rows built and
    written. On PostgreSQL, with several parts, what is sent to the server is not
    waited for at once: while it writes one part and answers the look-ups of the part
    after next, the part after next is validated and the next part's rows are built.
    A bad message in a later part aborts the transaction, so none is stored all the
    same.
    """
    count = len(given)
    starts = range(0, count, ENQUEUE_PART)

    def part(k: int) -> list[Valid]:
        if k >= len(starts):
            return []
        chunk = given[starts[k] : starts[k] + ENQUEUE_PART]
        return [validated(item, i, count, now) for i, item in enumerate(chunk, starts[k])]

    connection = session.connection()
    ids: list[str] = []
    written = Written({}, {})
    items = part(0)
    first = answer(session, items, ask(session, items, declared, policy), declared, written)
    rows = _rows(session, items, first, policy, now)
    upcoming = part(1)
    asked = ask(session, upcoming, declared, policy)
    for k in range(len(starts)):
        with pipelined(connection) if len(starts) > 1 else nullcontext():
            _write(connection, rows, now)
            written.add(rows.messages, rows.chats)
            ids += rows.ids
            after = part(k + 2)
            following = ask(session, after, declared, policy)
            reads = answer(session, upcoming, asked, declared, written)
            built = _rows(session, upcoming, reads, policy, now) if reads.settled else None
        # Rows whose building queries the store (to route a message without a line,
        # say) are built once the pipeline has ended: queries cannot wait inside it.
        rows = built if built is not None else _rows(session, upcoming, reads, policy, now)
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
    session: Session, items: Sequence[Valid], reads: Reads, policy: Policy, now: datetime
) -> _Rows:
    """The rows that store the messages of ``items`` whose keys are new, and their ids
    (a known key's id for the others)."""
    known, opted_out = reads.known, reads.opted_out
    pinned, chats, chats_written = _pinned_chats(session, reads, now)
    ids: list[str] = []
    messages: list[NewRow] = []
    decisions: list[transitions.DecisionRow] = []
    fresh = iter(new_message_ids(len(items)))
    for item in items:
        if item.idempotency_key and item.idempotency_key in known:
            ids.append(known[item.idempotency_key])
            continue
        found_chat: tuple[Line | None, int | None, bool] | None = pinned.get((item.line, item.to))
        if found_chat is None:
            field = f"{item.where}line"
            line, chat = _route(session, item, field, policy, now)
            found_chat = (line, chat.id if chat else None, chat is not None and _opted_out(chat))
        line, chat_id, chat_opted_out = found_chat
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


#: The columns of a new chat's row, in ``KnownChat``'s order.
_CHAT_COLUMNS = ("id", "line_id", "recipient", "provider_chat_id")


def _opted_out(chat: Chat) -> bool:
    return chat.opted_out_at is not None


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


def _route(
    session: Session, item: Valid, field: str, policy: Policy, now: datetime
) -> tuple[Line | None, Chat | None]:
    if item.line is not None:
        line = get_line(session, item.line, field)
        return line, chat_for(session, line, item.to, now, item.chat_id)
    if item.chat_id is not None:
        chat = session.scalars(
            select(Chat).where(Chat.provider_chat_id == item.chat_id)
        ).one_or_none()
        if chat is not None:
            if chat.recipient != item.to:
                raise InvalidInput("chat_id", item.chat_id, f"is a chat with {chat.recipient}")
            return session.get_one(Line, chat.line_id), chat
    existing = sticky_chat(session, item.to)
    if existing is not None:
        return session.get_one(Line, existing.line_id), existing
    candidates = lines_for_new_recipient(session, policy, now)
    if not candidates:
        return None, None
    return candidates[0], chat_for(session, candidates[0], item.to, now, item.chat_id)
