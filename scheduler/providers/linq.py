"""Linq, through its official SDK; our idempotency key goes with every send."""

from __future__ import annotations

from datetime import timedelta

import httpx
import linq

from policies.outcome import Failure
from scheduler.providers.base import Outbound, SendFailed, Sent

#: Linq error codes that carry meaning for the gate (see the provider's docs).
RECIPIENT_OPTED_OUT = 2024
LINE_CANNOT_SEND = 2027


class LinqProvider:
    """Sends with ``POST /v3/chats`` for a new conversation, into the chat otherwise.

    The SDK's own retries are off: a retry is a scheduling decision (backoff,
    caps, health may have changed), so the scheduler takes it and records it.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.client = linq.LinqAPIV3(
            api_key=api_key, base_url=base_url, max_retries=0, http_client=http_client
        )

    def send(self, message: Outbound) -> Sent:
        content: linq.types.MessageContentParam = {
            "parts": [{"type": "text", "value": message.body}],
            "idempotency_key": message.idempotency_key,
        }
        try:
            if message.provider_chat_id:
                sent = self.client.chats.messages.send(message.provider_chat_id, message=content)
                return Sent(provider_message_id=sent.message.id)
            created = self.client.chats.create(
                from_=message.line, to=[message.recipient], message=content
            )
        except linq.APIStatusError as exc:
            raise _failure(exc) from None
        except linq.APIConnectionError as exc:
            raise SendFailed(Failure.TRANSIENT, f"connection error: {exc.message}") from None
        return Sent(
            provider_message_id=created.chat.message.id,
            provider_chat_id=created.chat.id,
        )

    def close(self) -> None:
        self.client.close()


def _failure(exc: linq.APIStatusError) -> SendFailed:
    status, code = exc.status_code, exc.code
    detail = f"HTTP {status}" + (f", code {code}" if code is not None else "")
    if status == 403 and code == RECIPIENT_OPTED_OUT:
        return SendFailed(Failure.RECIPIENT_OPTED_OUT, detail)
    if status == 403 and code == LINE_CANNOT_SEND:
        return SendFailed(Failure.LINE_BLOCKED, detail)
    if status == 429:
        hint = exc.retry_after or _retry_after_header(exc.response)
        return SendFailed(Failure.RATE_LIMITED, detail, timedelta(seconds=hint) if hint else None)
    if status >= 500 or status == 408:
        return SendFailed(Failure.TRANSIENT, detail)
    return SendFailed(Failure.REJECTED, detail)


def _retry_after_header(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
