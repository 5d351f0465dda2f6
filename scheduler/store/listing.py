"""Read-only lists for people and dashboards: chats, messages and webhook events."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from policies.statuses import ChatHealth
from scheduler.store.models import Chat, Line, Message, WebhookEvent


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def chats(
    session: Session, health: ChatHealth | None, line: str | None, limit: int
) -> list[dict[str, Any]]:
    """Chats, newest first; ``health`` OPTED_OUT means an opt-out is on the chat."""
    query = select(Chat, Line.number).join(Line, Line.id == Chat.line_id)
    if health is ChatHealth.OPTED_OUT:
        query = query.where(Chat.opted_out_at.is_not(None))
    elif health is not None:
        query = query.where(Chat.opted_out_at.is_(None), Chat.health == health.value)
    if line is not None:
        query = query.where(Line.number == line)
    rows = session.execute(query.order_by(Chat.id.desc()).limit(limit)).all()
    return [
        {
            "line": number,
            "recipient": chat.recipient,
            "provider_chat_id": chat.provider_chat_id,
            "health": ChatHealth.OPTED_OUT.value if chat.opted_out_at else chat.health,
            "health_updated_at": _iso(chat.health_updated_at),
            "opted_out_at": _iso(chat.opted_out_at),
            "last_inbound_at": _iso(chat.last_inbound_at),
        }
        for chat, number in rows
    ]


class MessageFilter(NamedTuple):
    """Which messages a person asks for; every field already checked and normalised."""

    state: str | None = None
    #: E.164.
    recipient: str | None = None
    #: The line's number, E.164.
    line: str | None = None
    #: The code of the message's last decision (its hold, or why it finished).
    code: str | None = None
    idempotency_key: str | None = None
    #: Created at or after this moment.
    newer_than: datetime | None = None
    #: Created before this moment.
    older_than: datetime | None = None


def messages(
    session: Session,
    state: str | None,
    limit: int,
    where: MessageFilter = MessageFilter(),
) -> list[dict[str, Any]]:
    """Messages, newest first, without their bodies.

    Each filter has an index whose first column it is and whose second is
    ``created_at``, so the list is read in index order up to its limit.
    """
    where = where._replace(state=state) if state is not None else where
    query = select(Message, Line.number).outerjoin(Line, Line.id == Message.line_id)
    if where.state is not None:
        query = query.where(Message.state == where.state)
    if where.recipient is not None:
        query = query.where(Message.recipient == where.recipient)
    if where.line is not None:
        line_id = select(Line.id).where(Line.number == where.line).scalar_subquery()
        query = query.where(Message.line_id == line_id)
    if where.code is not None:
        query = query.where(Message.last_code == where.code)
    if where.idempotency_key is not None:
        query = query.where(Message.idempotency_key == where.idempotency_key)
    if where.newer_than is not None:
        query = query.where(Message.created_at >= where.newer_than)
    if where.older_than is not None:
        query = query.where(Message.created_at < where.older_than)
    rows = session.execute(
        query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit)
    )
    return [
        {
            "id": message.id,
            "to": message.recipient,
            "line": number,
            "state": message.state,
            "not_before": _iso(message.not_before),
            "code": message.last_code,
            "reason": message.last_reason,
            "created_at": _iso(message.created_at),
            "sent_at": _iso(message.sent_at),
            "idempotency_key": message.idempotency_key,
        }
        for message, number in rows
    ]


def events(
    session: Session, outcome: str | None, limit: int, with_payload: bool = False
) -> list[dict[str, Any]]:
    """Webhook events received, newest first; payloads only when asked for."""
    query = select(WebhookEvent)
    if outcome is not None:
        query = query.where(WebhookEvent.outcome == outcome)
    rows = session.scalars(query.order_by(WebhookEvent.received_at.desc()).limit(limit))
    return [
        {
            "id": event.id,
            "source": event.source,
            "event_type": event.event_type,
            "received_at": _iso(event.received_at),
            "outcome": event.outcome,
            "detail": event.detail,
            # When retention emptied its payload (and a rejected event's detail).
            "purged_at": _iso(event.purged_at),
            **({"payload": event.payload} if with_payload else {}),
        }
        for event in rows
    ]
