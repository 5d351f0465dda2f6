"""A message as the application gives it, and as validation leaves it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from policies.config import CATEGORY_NAME, DEFAULT_CATEGORY, Policy
from policies.e164 import to_e164
from policies.errors import InvalidInput
from policies.text import storable_text, storable_time
from policies.windows import has_zone, zone

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
    #: ``transactional`` (the default), ``marketing``, or a category the policy defines:
    #: its window on the recipient's clock and its priority.
    category: str = DEFAULT_CATEGORY
    #: The recipient's IANA time zone, when the application knows it better than the
    #: number does (a ported or roaming number): it wins.
    recipient_tz: str | None = None


#: The fields of a message in NewMessage's order.
_FIELD_ORDER = tuple(NewMessage.__dataclass_fields__)
#: The keys a message given as a mapping may have.
_FIELDS = frozenset(_FIELD_ORDER)
#: What a mapping leaves out of a message: each field's default.
_DEFAULTS = {name: f.default for name, f in NewMessage.__dataclass_fields__.items()}
#: The longest IANA zone name is under 40 characters.
MAX_ZONE_CHARS = 64


class Valid(NamedTuple):
    """A message that passed validation: its numbers in E.164."""

    to: str
    body: str
    line: str | None
    chat_id: str | None
    idempotency_key: str | None
    send_at: datetime | None
    expires_at: datetime | None
    category: str
    recipient_tz: str | None
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
    category: str
    #: The category's priority under the policy in force (higher is claimed first).
    priority: int
    recipient_tz: str | None
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
            item.category,
            item.recipient_tz,
        )
    elif isinstance(item, Mapping):
        unknown = item.keys() - _FIELDS
        if unknown:
            name = sorted(unknown, key=str)[0]
            raise InvalidInput(f"{where}.{name}", item[name], "is not a message field")
        if "to" not in item or "body" not in item:
            raise InvalidInput(where, dict(item), "needs at least 'to' and 'body'")
        fields = tuple(item.get(name, _DEFAULTS.get(name)) for name in _FIELD_ORDER)
    else:
        raise InvalidInput(where, item, "must be a NewMessage or a mapping of its fields")
    to, body, line, chat_id, key, send_at, expires_at, category, recipient_tz = fields
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
    category = _category(category, f"{field}category")
    _check_zone(recipient_tz, f"{field}recipient_tz")
    return Valid(to, body, line, chat_id, key, send_at, expires_at, category, recipient_tz, field)


def _category(value: object, field: str) -> str:
    """A category's name, as given (checked against the policy by ``check_categories``)."""
    if value is None:
        return DEFAULT_CATEGORY
    if not isinstance(value, str) or not CATEGORY_NAME.fullmatch(value):
        raise InvalidInput(
            field,
            value,
            "is not a category name (transactional, marketing, or one the policy defines)",
        )
    return value


def _check_zone(value: object, field: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > MAX_ZONE_CHARS:
        raise InvalidInput(field, value, "must be the name of an IANA time zone")
    try:
        zone(value)
    except ValueError as exc:
        raise InvalidInput(field, value, str(exc)) from None


def check_categories(items: Sequence[Valid], policy: Policy) -> None:
    """Refuse a category the policy does not define, and a message of a category with a
    window whose recipient's time zone is unknown (no zone given, none from the number):
    its window could not be read."""
    for item in items:
        rules = policy.category(item.category)
        if rules is None:
            defined = ", ".join(sorted(policy.categories))
            raise InvalidInput(
                f"{item.where}category",
                item.category,
                f"is not a category of the policy (it defines {defined})",
            )
        if rules.window is not None and item.recipient_tz is None and not has_zone(item.to):
            raise InvalidInput(
                f"{item.where}recipient_tz",
                None,
                f"is needed: {item.category} goes {rules.window} on the recipient's clock, "
                f"and the number {item.to} gives no time zone",
            )


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
