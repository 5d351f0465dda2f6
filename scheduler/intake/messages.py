"""A message as the application gives it, and as validation leaves it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from policies.e164 import to_e164
from policies.errors import InvalidInput
from policies.text import storable_text, storable_time

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


#: The fields of a message in NewMessage's order.
_FIELD_ORDER = tuple(NewMessage.__dataclass_fields__)
#: The keys a message given as a mapping may have.
_FIELDS = frozenset(_FIELD_ORDER)


class Valid(NamedTuple):
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


class NewRow(NamedTuple):
    """A new message's row, in the messages table's column names; its last five
    fields are its first state and why (``transitions.Entry``)."""

    id: str
    idempotency_key: str | None
    line_id: int | None
    chat_id: int | None
    #: The application named the line: never rerouted.
    pinned: bool
    recipient: str
    body: str
    body_hash: str
    send_at: datetime | None
    expires_at: datetime | None
    state: str
    not_before: datetime | None
    held_since: datetime | None
    last_code: str
    last_reason: str


def validated(item: NewMessage | Mapping[str, Any], index: int, count: int, now: datetime) -> Valid:
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
        raise InvalidInput(f"{field}body", body, f"is longer than {MAX_BODY_CHARS} characters")
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
    return Valid(to, body, line, chat_id, key, send_at, expires_at, field)


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
