"""Linq, through its official SDK; our idempotency key goes with every send."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import linq

from policies.errors import HealthgateError
from policies.outcome import Failure
from scheduler.providers.base import Outbound, SendFailed, Sent
from scheduler.providers.http import TIMEOUT, retry_after

#: Linq error codes that carry meaning for the gate (see the provider's docs).
RECIPIENT_OPTED_OUT = 2024
LINE_CANNOT_SEND = 2027


class LinqUnavailable(HealthgateError):
    """A read from Linq failed; nothing stored is changed because of it."""


class LinqProvider:
    """Sends with ``POST /v3/chats`` for a new conversation, into the chat otherwise.

    The SDK's own retries are off: a retry is a scheduling decision (backoff,
    caps, health may have changed), so the scheduler takes it and records it. The
    message id is the idempotency key, in the body and as the ``Idempotency-Key``
    header, on every attempt: Linq sends a key it has seen once only.
    """

    deduplicates = True

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.client = linq.LinqAPIV3(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            http_client=http_client,
            timeout=TIMEOUT,
        )

    def send(self, message: Outbound) -> Sent:
        content: linq.types.MessageContentParam = {
            "parts": [{"type": "text", "value": message.body}],
            "idempotency_key": message.idempotency_key,
        }
        headers = {"Idempotency-Key": message.idempotency_key}
        try:
            if message.provider_chat_id:
                sent = self.client.chats.messages.send(
                    message.provider_chat_id, message=content, extra_headers=headers
                )
                return Sent(provider_message_id=sent.message.id)
            created = self.client.chats.create(
                from_=message.line, to=[message.recipient], message=content, extra_headers=headers
            )
        except linq.APIStatusError as exc:
            raise _failure(exc) from None
        except linq.APIConnectionError as exc:
            raise SendFailed(Failure.TRANSIENT, f"connection error: {exc.message}") from None
        return Sent(
            provider_message_id=created.chat.message.id,
            provider_chat_id=created.chat.id,
        )

    def phone_numbers(self) -> list[dict[str, Any]]:
        """``GET /v3/phone_numbers`` as plain data, extra and deprecated fields included."""
        try:
            listed = self.client.phone_numbers.list()
        except linq.APIError as exc:
            raise LinqUnavailable(f"linq phone_numbers: {exc.message}") from None
        return [number.to_dict() for number in listed.phone_numbers]

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
        hint = timedelta(seconds=exc.retry_after) if exc.retry_after else None
        return SendFailed(Failure.RATE_LIMITED, detail, hint or retry_after(exc.response))
    if status == 409:
        return SendFailed(Failure.NO_ELIGIBLE_LINE, detail)
    if status >= 500 or status == 408:
        return SendFailed(Failure.TRANSIENT, detail)
    return SendFailed(Failure.REJECTED, detail)
