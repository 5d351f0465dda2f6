"""Linq webhook bodies in the SDK's 2026-02-03 shapes, and Standard Webhooks signing."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"healthgate-test-signing-secret!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone-else-entirely-secret!!!!").decode()
CHAT_ID = "chat_0001"

_ids = itertools.count(1)


def signed(
    payload: dict[str, Any] | bytes, at: datetime, secret: str = SECRET, webhook_id: str = ""
) -> tuple[bytes, dict[str, str]]:
    """The body and headers Linq would send, signed with ``secret`` at ``at``."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    webhook_id = webhook_id or f"msg_{next(_ids):06d}"
    signature = Webhook(secret).sign(webhook_id, at, body.decode())
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return body, headers


def _envelope(kind: str, data: dict[str, Any], at: datetime, event_id: str) -> dict[str, Any]:
    return {
        "api_version": "v3",
        "webhook_version": "2026-02-03",
        "event_type": kind,
        "event_id": event_id or f"evt_{next(_ids):06d}",
        "created_at": at.isoformat(),
        "partner_id": "partner_1",
        "trace_id": "trace_1",
        "data": data,
    }


def _handle(number: str, at: datetime, is_me: bool) -> dict[str, Any]:
    return {
        "id": f"h_{number}",
        "handle": number,
        "joined_at": at.isoformat(),
        "service": "iMessage",
        "is_me": is_me,
    }


def message_event(
    line: str,
    sender: str,
    at: datetime,
    *,
    text: str = "ok",
    kind: str = "message.received",
    direction: str = "inbound",
    status: str | None = None,
    status_at: datetime | None = None,
    chat_id: str = CHAT_ID,
    event_id: str = "",
) -> dict[str, Any]:
    """A message event; ``status`` adds the chat's ``health_status``."""
    chat: dict[str, Any] = {
        "id": chat_id,
        "is_group": False,
        "owner_handle": _handle(line, at, True),
    }
    if status is not None:
        chat["health_status"] = {
            "status": status,
            "updated_at": (status_at or at).isoformat(),
            "doc_url": "https://docs.linqapp.com/guides/chats/chat-health",
        }
    data = {
        "id": f"m_{next(_ids):06d}",
        "chat": chat,
        "direction": direction,
        "parts": [{"type": "text", "value": text}],
        "sender_handle": _handle(sender, at, direction == "outbound"),
        "service": "iMessage",
        "sent_at": at.isoformat(),
    }
    return _envelope(kind, data, at, event_id)


def chat_health_event(
    line: str, status: str, at: datetime, *, chat_id: str = CHAT_ID, event_id: str = ""
) -> dict[str, Any]:
    """An outbound ``message.delivered`` carrying the chat's health, as Linq sends them."""
    return message_event(
        line,
        line,
        at,
        kind="message.delivered",
        direction="outbound",
        status=status,
        chat_id=chat_id,
        event_id=event_id,
    )


def chat_created(
    line: str, recipient: str, status: str, at: datetime, *, chat_id: str = CHAT_ID
) -> dict[str, Any]:
    data = {
        "id": chat_id,
        "created_at": at.isoformat(),
        "updated_at": at.isoformat(),
        "is_group": False,
        "handles": [_handle(line, at, True), _handle(recipient, at, False)],
        "health_status": {"status": status, "updated_at": at.isoformat(), "doc_url": "x"},
    }
    return _envelope("chat.created", data, at, "")


def line_event(
    number: str, at: datetime, *, event_id: str = "", **changes: str | None
) -> dict[str, Any]:
    """``phone_number.status_updated``; ``changes`` are its ``previous_/new_*`` fields."""
    data: dict[str, Any] = {"phone_number": number, "changed_at": at.isoformat()}
    data.update({k: v for k, v in changes.items() if v is not None})
    return _envelope("phone_number.status_updated", data, at, event_id)
