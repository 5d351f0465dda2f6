"""Putting messages into the outbox: validated, idempotent, one transaction per call."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Row, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from policies.config import OptOutScope, Policy
from policies.content import body_digest
from policies.e164 import to_e164
from policies.errors import InvalidInput
from policies.statuses import Action
from policies.text import storable_text, storable_time
from scheduler.bulk import columns_of, insert_columns, pipelined, rows_by_key
from scheduler.constants import ENQUEUE_PART
from scheduler.lines import declared_lines, get_line, sync_lines
from scheduler.models import Chat, DecisionRecord, Line, Message, MessageState, OptOut
from scheduler.router import lines_for_new_recipient, sticky_chat
from scheduler.runtime import Runtime, utcnow

#: Longer bodies are refused rather than split: splitting is the provider's business.
MAX_BODY_CHARS = 10_000
MAX_KEY_CHARS = 200


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message to enqueue, as the application gives it."""

    to: str
    body: str
    line: str | None = None
    chat_id: str | None = None
    idempotency_key: str | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None


#: A stored chat as ``_existing_chats`` reads it: id, line id, recipient, provider
#: chat id, opt-out time.
ChatRow = Row[int, int, str, str | None, datetime | None]

#: The keys a message given as a mapping may have.
_FIELDS = frozenset(NewMessage.__dataclass_fields__)

_MESSAGES = cast(Table, Message.__table__)
_CHATS = cast(Table, Chat.__table__)
_DECISIONS = cast(Table, DecisionRecord.__table__)
_OPT_OUTS = cast(Table, OptOut.__table__)

#: The fields of a message in NewMessage's order.
_FIELD_ORDER = tuple(NewMessage.__dataclass_fields__)

_sequence = itertools.count()


def new_message_id() -> str:
    """A unique id that sorts in enqueue order: milliseconds, a counter, then randomness.

    Dispatch goes in id order, so messages of one chat leave in the order they came.
    """
    return new_message_ids(1)[0]


def new_message_ids(count: int) -> list[str]:
    """``count`` ids as ``new_message_id`` makes them, their randomness read at once."""
    millis = time.time_ns() // 1_000_000
    noise = os.urandom(7 * count).hex()
    return [
        f"msg_{millis:012x}{next(_sequence) % 0x1000000:06x}{noise[14 * i : 14 * i + 14]}"
        for i in range(count)
    ]


def enqueue_many(
    runtime: Runtime,
    messages: Iterable[NewMessage | Mapping[str, Any]],
    now: datetime | None = None,
) -> list[str]:
    """Enqueue many messages in one transaction and return their ids, in order.

    One bad message and none is stored. A key seen before returns the existing
    message's id.
    """
    now = now or utcnow()
    given = list(messages)
    policy = runtime.policy
    for attempt in range(2):
        try:
            with runtime.sessions.begin() as session:
                lines = sync_lines(session, policy, now)
                return _store_all(session, given, lines, policy, now)
        except IntegrityError:
            # A concurrent enqueue stored one of our idempotency keys first; the
            # second pass finds it and returns its id.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _store_all(
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

    def validated(k: int) -> list[_Valid]:
        if k >= len(starts):
            return []
        part = given[starts[k] : starts[k] + ENQUEUE_PART]
        return [_validated(item, i, count, now) for i, item in enumerate(part, starts[k])]

    connection = session.connection()
    ids: list[str] = []
    written = _Written({}, {})
    items = validated(0)
    first = _answer(session, items, _ask(session, items, declared, policy), declared, written)
    rows = _rows(session, items, first, policy, now)
    upcoming = validated(1)
    asked = _ask(session, upcoming, declared, policy)
    for k in range(len(starts)):
        with pipelined(connection) if len(starts) > 1 else nullcontext():
            _write(connection, rows, now)
            written.add(rows)
            ids += rows.ids
            after = validated(k + 2)
            following = _ask(session, after, declared, policy)
            reads = _answer(session, upcoming, asked, declared, written)
            built = _rows(session, upcoming, reads, policy, now) if reads.settled else None
        # Rows whose building queries the store (to route a message without a line,
        # say) are built once the pipeline has ended: queries cannot wait inside it.
        rows = built if built is not None else _rows(session, upcoming, reads, policy, now)
        upcoming, asked = after, following
    return ids


def enqueue(runtime: Runtime, message: NewMessage, now: datetime | None = None) -> str:
    return enqueue_many(runtime, [message], now)[0]


class _Valid(NamedTuple):
    """A message that passed validation: its numbers in E.164."""

    to: str
    body: str
    line: str | None
    chat_id: str | None
    idempotency_key: str | None
    send_at: datetime | None
    expires_at: datetime | None
    #: How errors name this message's fields: "" for a call of one, else "messages[i]."
    where: str


def _validated(
    item: NewMessage | Mapping[str, Any], index: int, count: int, now: datetime
) -> _Valid:
    where = f"messages[{index}]"
    if isinstance(item, NewMessage):
        fields: tuple[Any, ...] = (
            item.to,
            item.body,
            item.line,
            item.chat_id,
            item.idempotency_key,
            item.send_at,
            item.expires_at,
        )
    elif isinstance(item, Mapping):
        unknown = item.keys() - _FIELDS
        if unknown:
            name = sorted(unknown, key=str)[0]
            raise InvalidInput(f"{where}.{name}", item[name], "is not a message field")
        if "to" not in item or "body" not in item:
            raise InvalidInput(where, dict(item), "needs at least 'to' and 'body'")
        fields = tuple(map(item.get, _FIELD_ORDER))
    else:
        raise InvalidInput(where, item, "must be a NewMessage or a mapping of its fields")
    to, body, line, chat_id, key, send_at, expires_at = fields
    field = "" if count == 1 else f"{where}."
    to = to_e164(to, f"{field}to")
    if line is not None:
        line = to_e164(line, f"{field}line")
    if not isinstance(body, str) or not body.strip():
        raise InvalidInput(f"{field}body", body, "must be non-empty text")
    storable_text(body, f"{field}body")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidInput(
            f"{field}body", body[:20] + "...", f"is longer than {MAX_BODY_CHARS} characters"
        )
    _check_text(key, f"{field}idempotency_key", MAX_KEY_CHARS)
    _check_text(chat_id, f"{field}chat_id", 64)
    if send_at is not None:
        _check_time(send_at, f"{field}send_at")
    if expires_at is not None:
        _check_time(expires_at, f"{field}expires_at")
        if expires_at <= now:
            raise InvalidInput(f"{field}expires_at", expires_at, "is already in the past")
        if send_at is not None and expires_at <= send_at:
            raise InvalidInput(f"{field}expires_at", expires_at, "is not after send_at")
    return _Valid(to, body, line, chat_id, key, send_at, expires_at, field)


def _check_time(value: object, field: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(field, value, "must be a timezone-aware datetime")
    storable_time(value, field)


def _check_text(value: object, field: str, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidInput(field, value, f"must be text of 1 to {limit} characters")
    storable_text(value, field)


class _Chat(NamedTuple):
    """A chat as a part reads it (see ``_FOUND_CHAT_COLUMNS``)."""

    id: int
    line_id: int
    recipient: str
    provider_chat_id: str | None
    opted_out_at: datetime | None


class _Rows(NamedTuple):
    """A part's rows to write, and the ids its messages have."""

    ids: list[str]
    #: The chats the part creates, with the ids they have.
    chats: list[_Chat]
    #: Whether those are written already (where the store gives no ids ahead).
    chats_written: bool
    messages: list[tuple[Any, ...]]
    decisions: list[tuple[Any, ...]]


class _Written(NamedTuple):
    """What the earlier parts of a call wrote, which a part's look-ups (sent before
    those writes) cannot see."""

    #: Message ids by idempotency key.
    keys: dict[str, str]
    #: New chats by (line id, recipient).
    chats: dict[tuple[int, str], _Chat]

    def add(self, rows: _Rows) -> None:
        for message in rows.messages:
            if message[1] is not None:
                self.keys[message[1]] = message[0]
        self.chats.update(((chat.line_id, chat.recipient), chat) for chat in rows.chats)


def _rows(
    session: Session, items: Sequence[_Valid], reads: _Reads, policy: Policy, now: datetime
) -> _Rows:
    """The rows that store the messages of ``items`` whose keys are new, and their ids
    (a known key's id for the others)."""
    known, opted_out = reads.known, reads.opted_out
    pinned, chats, chats_written = _pinned_chats(session, reads, now)
    ids: list[str] = []
    messages: list[tuple[Any, ...]] = []
    decisions: list[tuple[Any, ...]] = []
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
            known[item.idempotency_key] = message[0]
        ids.append(message[0])
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
            columns_of(_MESSAGE_COLUMNS, rows.messages),
            {"attempts": 0, "created_at": now, "updated_at": now},
        )
    if rows.decisions:
        insert_columns(
            connection, _DECISIONS, columns_of(_DECISION_COLUMNS, rows.decisions), {"at": now}
        )


#: The columns of a new chat's row, in ``_Chat``'s order.
_CHAT_COLUMNS = ("id", "line_id", "recipient", "provider_chat_id")
#: The columns of a new message's row that ``_new_row`` gives, in its order.
_MESSAGE_COLUMNS = (
    "id",
    "idempotency_key",
    "line_id",
    "chat_id",
    "pinned",
    "recipient",
    "body",
    "body_hash",
    "state",
    "not_before",
    "send_at",
    "expires_at",
    "held_since",
    "last_code",
    "last_reason",
)
#: The columns of its first decision's row, in ``_new_row``'s order.
_DECISION_COLUMNS = ("message_id", "action", "code", "reason", "not_before", "line")


class _Asked(NamedTuple):
    """A part's look-ups, asked and not yet read (see ``rows_by_key``)."""

    #: Stored messages with the part's idempotency keys.
    known: Callable[[], list[Any]]
    #: The part's recipients who opted out of the whole account.
    opted_out: Callable[[], list[Any]]
    #: The chats of the messages naming a declared line: stored, or an id to create it.
    chats: Callable[[], list[Any]]


def _ask(
    session: Session, items: Sequence[_Valid], declared: Mapping[str, Line], policy: Policy
) -> _Asked:
    """Ask at once for everything a part needs from the store."""
    connection = session.connection()
    keys = {(item.idempotency_key,) for item in items if item.idempotency_key}
    account = policy.opt_out.scope is OptOutScope.ACCOUNT
    recipients = {(item.to,) for item in items} if account else set()
    pairs = {
        (declared[item.line].id, item.to)
        for item in items
        if item.line is not None and item.line in declared
    }
    return _Asked(
        rows_by_key(connection, _MESSAGES, ("idempotency_key",), keys, ("idempotency_key", "id")),
        rows_by_key(connection, _OPT_OUTS, ("recipient",), recipients, ("recipient",)),
        rows_by_key(
            connection,
            _CHATS,
            ("line_id", "recipient"),
            pairs,
            _FOUND_CHAT_COLUMNS,
            number_missing=True,
        ),
    )


#: What a stored chat's look-up reads: see ``ChatRow``.
_FOUND_CHAT_COLUMNS = ("id", "line_id", "recipient", "provider_chat_id", "opted_out_at")


class _Reads(NamedTuple):
    """What a part read before it writes."""

    #: Stored messages' ids by idempotency key.
    known: dict[str, str]
    #: Recipients who opted out of the whole account.
    opted_out: set[str]
    #: The lines messages name, by number.
    lines: dict[str, Line]
    #: The provider chat id (or None) each (line id, recipient) of a new message with a
    #: named line should have: the last such message's.
    wanted: dict[tuple[int, str], str | None]
    #: The stored chats among ``wanted``, and those an earlier part of the call created.
    found: dict[tuple[int, str], ChatRow | _Chat]
    #: The ids the others will have, where the store gives them ahead (PostgreSQL).
    new_ids: dict[tuple[int, str], int]
    #: Whether the part's rows can be built without querying the store.
    settled: bool


def _answer(
    session: Session,
    items: Sequence[_Valid],
    asked: _Asked,
    declared: Mapping[str, Line],
    written: _Written,
) -> _Reads:
    """Read what ``_ask`` asked, with what earlier parts wrote; refuse a line that is not
    declared and a chat id that another chat holds, naming the message's field."""
    known = {key: message_id for key, message_id, _ in asked.known()} | written.keys
    opted_out = {recipient for recipient, _ in asked.opted_out()}
    stored: dict[tuple[int, str], ChatRow | _Chat] = {}
    numbered: dict[tuple[int, str], int] = {}
    for row in asked.chats():
        if row.new_id is None:
            stored[(row.line_id, row.recipient)] = row
        else:
            numbered[(row.line_id, row.recipient)] = row.new_id
    stored |= written.chats
    fresh = [item for item in items if item.idempotency_key not in known]
    named: dict[str, str] = {}
    for item in fresh:
        if item.line is not None and item.line not in named:
            named[item.line] = f"{item.where}line"
    lines = declared_lines(declared, named)
    wanted: dict[tuple[int, str], str | None] = {}
    givers: dict[tuple[int, str], str] = {}
    for item in fresh:
        if item.line is not None:
            pair = (lines[item.line].id, item.to)
            wanted[pair] = item.chat_id
            givers[pair] = item.where
    found = {pair: stored[pair] for pair in wanted if pair in stored}
    _check_chat_ids(session, wanted, givers, found)
    # Building rows queries the store to route a message without a line, to give a
    # stored chat the provider chat id it lacked, and to create a chat with no id ahead.
    routed = any(item.line is None for item in fresh)
    updated = any(
        chat_id and pair in found and found[pair].provider_chat_id is None
        for pair, chat_id in wanted.items()
    )
    unnumbered = any(pair not in found and pair not in numbered for pair in wanted)
    settled = not (routed or updated or unnumbered)
    return _Reads(known, opted_out, lines, wanted, found, numbered, settled)


def _check_chat_ids(
    session: Session,
    wanted: Mapping[tuple[int, str], str | None],
    givers: Mapping[tuple[int, str], str],
    found: Mapping[tuple[int, str], ChatRow | _Chat],
) -> None:
    """Refuse a provider chat id about to be given to a chat when another chat holds it,
    stored or given in the same call: the store keeps one chat per provider chat id."""
    given: dict[str, tuple[int, str]] = {}
    for pair, chat_id in wanted.items():
        existing = found.get(pair)
        if chat_id is None or (existing is not None and existing.provider_chat_id is not None):
            continue
        if chat_id in given:
            other = given[chat_id][1]
            raise InvalidInput(
                f"{givers[pair]}chat_id", chat_id, f"is also given to the chat with {other}"
            )
        given[chat_id] = pair
    if not given:
        return
    holders = rows_by_key(
        session.connection(),
        _CHATS,
        ("provider_chat_id",),
        [(chat_id,) for chat_id in given],
        ("provider_chat_id", "recipient"),
    )
    for chat_id, recipient, _ in holders():
        field = f"{givers[given[chat_id]]}chat_id"
        raise InvalidInput(field, chat_id, f"belongs to another chat, with {recipient}")


def _opted_out(chat: Chat) -> bool:
    return chat.opted_out_at is not None


def _pinned_chats(
    session: Session, reads: _Reads, now: datetime
) -> tuple[dict[tuple[str | None, str], tuple[Line, int, bool]], list[_Chat], bool]:
    """The line, chat id and chat opt-out of every (line, recipient) pair that messages
    naming their line go to; the chats among them that are new; whether those are
    already written.

    ``found`` chats are kept as stored (given a provider chat id they lacked). The
    others have ids from the chats' sequence (see ``_ask``), so that they are written
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
    made = [_Chat(ids[(line_id, to)], line_id, to, chat_id, None) for line_id, to, chat_id in new]
    chats.update(((chat.line_id, chat.recipient), (chat.id, False)) for chat in made)
    by_id = {line.id: (number, line) for number, line in reads.lines.items()}
    pinned: dict[tuple[str | None, str], tuple[Line, int, bool]] = {
        (by_id[line_id][0], recipient): (by_id[line_id][1], chat_id, opted_out)
        for (line_id, recipient), (chat_id, opted_out) in chats.items()
    }
    return pinned, made, not numbered


def _new_row(
    message_id: str,
    item: _Valid,
    line: Line | None,
    chat_id: int | None,
    policy: Policy,
    now: datetime,
    opted_out: bool,
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """The message's row and its first decision's, if the enqueue decided anything: the
    columns of ``_MESSAGE_COLUMNS`` and ``_DECISION_COLUMNS``."""
    state, held_since = MessageState.QUEUED.value, None
    not_before: datetime | None = item.send_at or now
    action, code, reason = "ENQUEUE", "enqueued", "enqueued"
    # A plain enqueue's decision says until when only when send_at delays it.
    decided_until = item.send_at
    if opted_out:
        # Later enqueues to an opted-out chat are dropped at once, with that reason.
        state, not_before, decided_until = MessageState.DROPPED.value, None, None
        action, code, reason = Action.DROP.value, "chat_opted_out", "the recipient opted out"
    elif line is None:
        state, held_since = MessageState.DEFERRED.value, now
        deadline = now + policy.chat.max_hold
        not_before = min(deadline, item.expires_at) if item.expires_at else deadline
        decided_until = not_before
        action, code = Action.DEFER.value, "no_line"
        reason = "no line may take a new recipient now (all CRITICAL, FLAGGED or AT_RISK)"
    message = (
        message_id,
        item.idempotency_key,
        line.id if line else None,
        chat_id,
        item.line is not None,
        item.to,
        item.body,
        body_digest(item.body),
        state,
        not_before,
        item.send_at,
        item.expires_at,
        held_since,
        code,
        reason,
    )
    if item.line is not None and action == "ENQUEUE":
        # Queued on the line the application named: nothing was decided, and the
        # message's row keeps all an enqueue record would (explain shows it first).
        return message, None
    number = line.number if line else None
    return message, (message_id, action, code, reason, decided_until, number)


def _route(
    session: Session, item: _Valid, field: str, policy: Policy, now: datetime
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


def chat_for(
    session: Session,
    line: Line,
    recipient: str,
    now: datetime,
    provider_chat_id: str | None = None,
) -> Chat:
    """The chat of ``line`` with ``recipient``, created HEALTHY when new."""
    chat = session.scalars(
        select(Chat).where(Chat.line_id == line.id, Chat.recipient == recipient)
    ).one_or_none()
    if chat is None:
        chat = Chat(
            line_id=line.id,
            recipient=recipient,
            provider_chat_id=provider_chat_id,
            health="HEALTHY",
            created_at=now,
        )
        session.add(chat)
        session.flush()
    elif provider_chat_id and chat.provider_chat_id is None:
        chat.provider_chat_id = provider_chat_id
    return chat
