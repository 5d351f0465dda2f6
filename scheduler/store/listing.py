"""Read-only lists for people and dashboards: chats, messages and webhook events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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


def messages(session: Session, state: str | None, limit: int) -> list[dict[str, Any]]:
    """Messages, newest first, without their bodies."""
    query = select(Message, Line.number).outerjoin(Line, Line.id == Message.line_id)
    if state is not None:
        query = query.where(Message.state == state)
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
