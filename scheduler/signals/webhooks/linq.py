"""Linq webhook bodies read into the facts healthgate acts on: pure, no clock, no store.

Shapes follow the ``linq-python`` SDK's ``linq.types`` webhook events in the 2026-02-03
format (``data.direction``, ``data.parts``, ``data.chat.health_status``). Only the fields
healthgate uses are read; the rest of a body is kept as it came, in the event record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from policies.e164 import to_e164
from policies.errors import InvalidInput
from policies.statuses import (
    ChatHealth,
    LineReputation,
    LineStatus,
    parse_chat_health,
    parse_field,
    parse_line_reputation,
    parse_line_status,
)
from policies.text import storable_text, storable_time

#: Message events whose ``data`` is the SDK's ``MessageEventV2`` (or, for edits, close to it).
MESSAGE_EVENTS = frozenset(
    {"message.sent", "message.received", "message.delivered", "message.read", "message.edited"}
)
CHAT_CREATED = "chat.created"
PHONE_NUMBER_STATUS = "phone_number.status_updated"


@dataclass(frozen=True, slots=True)
class ChatHealthSeen:
    """A chat's health as the provider reports it, with the time it last changed."""

    chat_id: str
    #: Our line and the other party, when the body names them (to find or create the chat).
    line: str | None
    recipient: str | None
    status: ChatHealth
    updated_at: datetime
    line_field: str = "data.chat.owner_handle.handle"
    time_field: str = "data.chat.health_status.updated_at"

    @property
    def time(self) -> datetime:
        return self.updated_at


@dataclass(frozen=True, slots=True)
class InboundSeen:
    """A message from the recipient: a reply, or an opt-out / opt-in keyword."""

    chat_id: str
    #: None when the body does not name it: the chat is then found by Linq's id.
    line: str | None
    recipient: str
    text: str
    at: datetime
    line_field: str = "data.chat.owner_handle.handle"
    time_field: str = "data.sent_at"

    @property
    def time(self) -> datetime:
        return self.at


@dataclass(frozen=True, slots=True)
class LineSeen:
    """A line's reputation and runtime status, changed at ``changed_at``."""

    number: str
    reputation: LineReputation | None
    status: LineStatus | None
    changed_at: datetime
    line_field: str = "data.phone_number"
    time_field: str = "data.changed_at"

    @property
    def time(self) -> datetime:
        return self.changed_at


Fact = ChatHealthSeen | InboundSeen | LineSeen


@dataclass(frozen=True, slots=True)
class LinqEvent:
    """One webhook event: its id, its type, and what it tells healthgate."""

    event_id: str
    event_type: str
    facts: tuple[Fact, ...]
    #: Why there is nothing to do, when ``facts`` is empty.
    note: str | None = None


def _storable(value: str) -> str:
    try:
        return storable_text(value, "value")
    except InvalidInput as exc:
        raise ValueError(exc.problem) from None


def _in_utc(value: datetime) -> datetime:
    try:
        return storable_time(value, "value")
    except InvalidInput as exc:
        raise ValueError(exc.problem) from None


#: Ids and names the store keeps in columns of bounded length; NUL no store can keep.
#: Longer or NUL-bearing values are refused as bad input instead of failing the insert.
EventId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
EventType = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_storable)]
ChatId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_storable)]
#: A time with a timezone that also has a UTC equivalent (the store keeps UTC).
Moment = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Handle(_Model):
    handle: str
    is_me: bool | None = None


class _HealthStatus(_Model):
    status: str
    updated_at: Moment


class _MessageChat(_Model):
    id: ChatId
    health_status: _HealthStatus | None = None
    is_group: bool | None = None
    owner_handle: _Handle | None = None


class _Part(_Model):
    type: str
    value: Any = None


class _Message(_Model):
    chat: _MessageChat
    direction: Literal["inbound", "outbound"]
    parts: list[_Part] = []
    sender_handle: _Handle
    sent_at: Moment | None = None


class _Chat(_Model):
    id: ChatId
    handles: list[_Handle]
    health_status: _HealthStatus
    is_group: bool = False


class _PhoneNumber(_Model):
    phone_number: str
    changed_at: Moment
    new_reputation: str | None = None
    #: Deprecated alias of ``new_reputation``; read only when that is absent.
    new_health_status: str | None = None
    new_status: str | None = None


class _Envelope(_Model):
    event_id: EventId
    event_type: EventType
    created_at: Moment
    data: dict[str, Any]


def parse_event(body: bytes) -> LinqEvent:
    """Read a verified webhook body; bad input raises ``InvalidInput`` naming the field."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidInput("body", _short(body), f"is not JSON ({exc})") from None
    except RecursionError:
        raise InvalidInput("body", _short(body), "is nested too deeply to read") from None
    if not isinstance(document, dict):
        raise InvalidInput("body", _short(body), "must be a JSON object")
    envelope = _validate(_Envelope, document, "")
    kind = envelope.event_type
    note = None
    if kind in MESSAGE_EVENTS:
        message = _validate(_Message, envelope.data, "data")
        facts, note = _message_facts(kind, message, envelope.created_at)
    elif kind == CHAT_CREATED:
        facts = _chat_facts(_validate(_Chat, envelope.data, "data"))
    elif kind == PHONE_NUMBER_STATUS:
        facts = (_line_fact(_validate(_PhoneNumber, envelope.data, "data")),)
    else:
        return LinqEvent(envelope.event_id, kind, (), f"{kind} carries no health signal")
    if not facts:
        note = note or "group chats carry no health signal"
    return LinqEvent(envelope.event_id, kind, facts, note)


def event_id_of(body: bytes) -> str | None:
    """The body's ``event_id`` when it has one, even if the rest is malformed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get("event_id") if isinstance(document, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= 200 or "\x00" in value:
        return None
    return value


def event_type_of(body: bytes) -> str | None:
    """The body's ``event_type`` when it has a usable one, even if the rest is malformed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value = document.get("event_type") if isinstance(document, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= 64 or "\x00" in value:
        return None
    return value


def _message_facts(
    kind: str, message: _Message, created_at: datetime
) -> tuple[tuple[Fact, ...], str | None]:
    """The facts of a message event, and why there are none when there are none."""
    chat = message.chat
    if chat.is_group:
        return (), None  # Linq never marks or blocks group threads
    inbound = message.direction == "inbound"
    if inbound and "@" in message.sender_handle.handle:
        # An Apple ID: healthgate sends to phone numbers only, so nothing here is its.
        return (), "the sender is an email address (an Apple ID): healthgate cannot send to it"
    line: str | None = None
    line_field = "data.chat.owner_handle.handle"
    if chat.owner_handle is not None:
        line = to_e164(chat.owner_handle.handle, line_field)
    elif not inbound:
        line_field = "data.sender_handle.handle"
        line = to_e164(message.sender_handle.handle, line_field)
    recipient = (
        to_e164(message.sender_handle.handle, "data.sender_handle.handle") if inbound else None
    )
    facts: list[Fact] = []
    if chat.health_status is not None:
        facts.append(
            ChatHealthSeen(
                chat.id,
                line,
                recipient,
                parse_field(
                    parse_chat_health, "data.chat.health_status.status", chat.health_status.status
                ),
                chat.health_status.updated_at,
                line_field,
            )
        )
    if kind == "message.received" and inbound:
        assert recipient is not None
        text = "\n".join(
            p.value for p in message.parts if p.type == "text" and isinstance(p.value, str)
        )
        at, field = (
            (message.sent_at, "data.sent_at") if message.sent_at else (created_at, "created_at")
        )
        facts.append(InboundSeen(chat.id, line, recipient, text, at, line_field, field))
    return tuple(facts), None


def _chat_facts(chat: _Chat) -> tuple[Fact, ...]:
    if chat.is_group:
        return ()
    ours = [i for i, h in enumerate(chat.handles) if h.is_me]
    others = [i for i, h in enumerate(chat.handles) if not h.is_me]
    line = recipient = None
    if len(ours) == 1 and len(others) == 1:
        line = to_e164(chat.handles[ours[0]].handle, f"data.handles[{ours[0]}].handle")
        recipient = to_e164(chat.handles[others[0]].handle, f"data.handles[{others[0]}].handle")
    status = parse_field(parse_chat_health, "data.health_status.status", chat.health_status.status)
    line_field = f"data.handles[{ours[0]}].handle" if ours else "data.handles"
    return (
        ChatHealthSeen(
            chat.id,
            line,
            recipient,
            status,
            chat.health_status.updated_at,
            line_field=line_field,
            time_field="data.health_status.updated_at",
        ),
    )


def _line_fact(data: _PhoneNumber) -> LineSeen:
    number = to_e164(data.phone_number, "data.phone_number")
    # Prefer the current name; the deprecated alias is read only when it is alone.
    field = "data.new_reputation" if data.new_reputation is not None else "data.new_health_status"
    value = data.new_reputation if data.new_reputation is not None else data.new_health_status
    reputation = parse_field(parse_line_reputation, field, value) if value is not None else None
    status = None
    if data.new_status is not None:
        status = parse_field(parse_line_status, "data.new_status", data.new_status)
    if reputation is None and status is None:
        raise InvalidInput("data.new_reputation", None, "is missing, and so is data.new_status")
    return LineSeen(number, reputation, status, data.changed_at)


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], value: object, prefix: str) -> _M:
    try:
        return model.model_validate(value)
    except RecursionError:
        raise InvalidInput(prefix or "body", None, "is nested too deeply to read") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in (prefix, *error["loc"]) if p != "")
        found = None if error["type"] == "missing" else _scalar(error.get("input"))
        problem = error["msg"].removeprefix("Value error, ")
        raise InvalidInput(field or "body", found, problem) from None


def _scalar(value: object) -> object:
    """The offending value when it is short and plain; its kind otherwise (bodies stay out)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:77] + "..."
    return f"<{type(value).__name__}>"


def _short(body: bytes) -> str:
    text = body[:40].decode("utf-8", errors="replace")
    return text + ("..." if len(body) > 40 else "")
