"""Putting messages into the outbox: validated, idempotent, one transaction per call."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Row, Table, select, update
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

    While PostgreSQL writes one part's rows, the next part is validated: the two take
    about as long, and neither waits for the other. A bad message in a later part
    aborts the transaction, so none is stored all the same.
    """
    ids: list[str] = []
    count = len(given)
    with ExitStack() as writing:
        for start in range(0, count, ENQUEUE_PART):
            part = given[start : start + ENQUEUE_PART]
            items = [_validated(item, i, count, now) for i, item in enumerate(part, start)]
            writing.close()  # the previous part is written
            last = start + ENQUEUE_PART >= count
            ids += _store(session, items, declared, policy, now, None if last else writing)
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


def _store(
    session: Session,
    items: Sequence[_Valid],
    declared: Mapping[str, Line],
    policy: Policy,
    now: datetime,
    writing: ExitStack | None = None,
) -> list[str]:
    """Store the messages whose keys are new, read what they need first; their ids.

    With ``writing``, the rows are sent inside a pipeline it keeps open, not waited for.
    """
    known, opted_out, lines, wanted, found = _read(session, items, declared, policy)
    pinned = _pinned_chats(session, lines, wanted, found, now)
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
    # Many rows a statement (executemany / rows from arrays), not one flush per message.
    if messages:
        connection = session.connection()
        if writing is not None:
            writing.enter_context(pipelined(connection))
        insert_columns(
            connection,
            _MESSAGES,
            columns_of(_MESSAGE_COLUMNS, messages),
            {"attempts": 0, "created_at": now, "updated_at": now},
        )
        if decisions:
            insert_columns(
                connection,
                _DECISIONS,
                columns_of(_DECISION_COLUMNS, decisions),
                {"at": now},
            )
    return ids


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


class _Reads(NamedTuple):
    """What a call reads before it writes."""

    #: Stored messages' ids by idempotency key.
    known: dict[str, str]
    #: Recipients who opted out of the whole account.
    opted_out: set[str]
    #: The lines messages name, by number.
    lines: dict[str, Line]
    #: The provider chat id (or None) each (line id, recipient) of a new message with a
    #: named line should have: the last such message's.
    wanted: dict[tuple[int, str], str | None]
    #: The stored chats among ``wanted``.
    found: dict[tuple[int, str], ChatRow]


def _read(
    session: Session, items: Sequence[_Valid], declared: Mapping[str, Line], policy: Policy
) -> _Reads:
    """Everything the call needs from the store, read at once; refuses a line that is not
    declared and a chat id that another chat holds, naming the message's field."""
    known = _known_ids(session, items)
    opted_out = (
        _opted_out_recipients(session, items)
        if policy.opt_out.scope is OptOutScope.ACCOUNT
        else set()
    )
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
    found = _existing_chats(session, wanted)
    _check_chat_ids(session, wanted, givers, found)
    return _Reads(known, opted_out, lines, wanted, found)


def _check_chat_ids(
    session: Session,
    wanted: Mapping[tuple[int, str], str | None],
    givers: Mapping[tuple[int, str], str],
    found: Mapping[tuple[int, str], ChatRow],
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
    for chat_id, recipient in holders:
        field = f"{givers[given[chat_id]]}chat_id"
        raise InvalidInput(field, chat_id, f"belongs to another chat, with {recipient}")


def _known_ids(session: Session, items: Sequence[_Valid]) -> dict[str, str]:
    """The ids of stored messages with the idempotency keys of ``items``, by key."""
    keys = {(item.idempotency_key,) for item in items if item.idempotency_key}
    rows = rows_by_key(
        session.connection(), _MESSAGES, ("idempotency_key",), keys, ("idempotency_key", "id")
    )
    return {key: message_id for key, message_id in rows}


def _opted_out_recipients(session: Session, items: Sequence[_Valid]) -> set[str]:
    """The recipients of ``items`` who opted out of the whole account."""
    recipients = {(item.to,) for item in items}
    table = cast(Table, OptOut.__table__)
    rows = rows_by_key(session.connection(), table, ("recipient",), recipients, ("recipient",))
    return {recipient for (recipient,) in rows}


def _opted_out(chat: Chat) -> bool:
    return chat.opted_out_at is not None


def _existing_chats(
    session: Session, wanted: Mapping[tuple[int, str], str | None]
) -> dict[tuple[int, str], ChatRow]:
    """The stored chats among ``wanted`` (line id, recipient), by that pair.

    Plain rows, not ORM objects: only a few columns are needed, and a thousand
    objects cost more than the query.
    """
    rows = rows_by_key(
        session.connection(),
        _CHATS,
        ("line_id", "recipient"),
        wanted.keys(),
        ("id", "line_id", "recipient", "provider_chat_id", "opted_out_at"),
    )
    return {(row.line_id, row.recipient): row for row in rows}


def _pinned_chats(
    session: Session,
    lines: Mapping[str, Line],
    wanted: Mapping[tuple[int, str], str | None],
    found: Mapping[tuple[int, str], ChatRow],
    now: datetime,
) -> dict[tuple[str | None, str], tuple[Line, int, bool]]:
    """The line, chat id and chat opt-out of every (line, recipient) pair that messages
    naming their line go to: ``found`` chats as stored (given a provider chat id they
    lacked), the others created in one statement."""
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
    if new:
        created = insert_columns(
            session.connection(),
            _CHATS,
            columns_of(("line_id", "recipient", "provider_chat_id"), new),
            {"health": "HEALTHY", "created_at": now},
            ("id", "line_id", "recipient"),
        )
        for chat in created:
            chats[(chat.line_id, chat.recipient)] = (chat.id, False)
    by_id = {line.id: (number, line) for number, line in lines.items()}
    return {
        (by_id[line_id][0], recipient): (by_id[line_id][1], chat_id, opted_out)
        for (line_id, recipient), (chat_id, opted_out) in chats.items()
    }


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
