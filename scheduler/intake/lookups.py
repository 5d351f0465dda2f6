"""What a part of an enqueue call reads before it writes: asked at once, read later, with
what the call wrote before."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Row, Table
from sqlalchemy.orm import Session

from policies.config import OptOutScope, Policy
from policies.errors import InvalidInput
from scheduler.intake.messages import NewRow, Valid
from scheduler.intake.repeats import KEY_COLUMNS, check_stored
from scheduler.store.bulk import rows_by_key
from scheduler.store.lines import declared_lines
from scheduler.store.models import Chat, Line, Message, OptOut

_MESSAGES = cast(Table, Message.__table__)
_CHATS = cast(Table, Chat.__table__)
_OPT_OUTS = cast(Table, OptOut.__table__)


#: A stored chat as ``ask`` reads it: id, line id, recipient, provider chat id, opt-out
#: time.
ChatRow = Row[int, int, str, str | None, datetime | None]


class KnownChat(NamedTuple):
    """A chat an earlier part of the call made, as a part reads a stored one (see
    ``_FOUND_CHAT_COLUMNS``)."""

    id: int
    line_id: int
    recipient: str
    provider_chat_id: str | None
    opted_out_at: datetime | None


class Written(NamedTuple):
    """What the earlier parts of a call wrote, which a part's look-ups (sent before
    those writes) cannot see."""

    #: Message ids by idempotency key.
    keys: dict[str, str]
    #: New chats by (line id, recipient).
    chats: dict[tuple[int, str], KnownChat]

    def add(self, messages: Sequence[NewRow], chats: Sequence[KnownChat]) -> None:
        """Remember a part's new messages and new chats."""
        for message in messages:
            if message.idempotency_key is not None:
                self.keys[message.idempotency_key] = message.id
        self.chats.update(((chat.line_id, chat.recipient), chat) for chat in chats)


class Asked(NamedTuple):
    """A part's look-ups, asked and not yet read (see ``rows_by_key``)."""

    #: Stored messages with the part's idempotency keys (``KEY_COLUMNS``).
    known: Callable[[], list[Any]]
    #: The part's recipients who opted out of the whole account.
    opted_out: Callable[[], list[Any]]
    #: The chats of the messages naming a declared line: stored, or an id to create it.
    chats: Callable[[], list[Any]]


def ask(
    session: Session, items: Sequence[Valid], declared: Mapping[str, Line], policy: Policy
) -> Asked:
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
    return Asked(
        rows_by_key(connection, _MESSAGES, ("idempotency_key",), keys, KEY_COLUMNS),
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


class Reads(NamedTuple):
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
    found: dict[tuple[int, str], ChatRow | KnownChat]
    #: The ids the others will have, where the store gives them ahead (PostgreSQL).
    new_ids: dict[tuple[int, str], int]
    #: Whether the part's rows can be built without querying the store.
    settled: bool


def answer(
    session: Session,
    items: Sequence[Valid],
    asked: Asked,
    declared: Mapping[str, Line],
    written: Written,
    line_numbers: Mapping[int, str],
) -> Reads:
    """Read what ``ask`` asked, with what earlier parts wrote; refuse a key stored with
    other content, a line that is not declared and a chat id that another chat holds,
    naming the message's field."""
    keyed = {item.idempotency_key: item for item in reversed(items) if item.idempotency_key}
    known: dict[str, str] = {}
    for row in asked.known():
        # Compared again here: a concurrent call may have stored the key since the
        # call's first check.
        check_stored(keyed[row.idempotency_key], row, line_numbers)
        known[row.idempotency_key] = row.id
    known |= written.keys
    opted_out = {recipient for recipient, _ in asked.opted_out()}
    stored: dict[tuple[int, str], ChatRow | KnownChat] = {}
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
    return Reads(known, opted_out, lines, wanted, found, numbered, settled)


def _check_chat_ids(
    session: Session,
    wanted: Mapping[tuple[int, str], str | None],
    givers: Mapping[tuple[int, str], str],
    found: Mapping[tuple[int, str], ChatRow | KnownChat],
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
