"""The one interface every send provider implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from policies.errors import HealthgateError
from policies.outcome import Failure
from scheduler import constants

#: Every provider call is bounded: a worker must not hang while its claim's lease runs down.
TIMEOUT = httpx.Timeout(
    constants.PROVIDER_TIMEOUT_SECONDS, connect=constants.PROVIDER_CONNECT_TIMEOUT_SECONDS
)


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message as a provider needs it."""

    message_id: str
    line: str
    recipient: str
    body: str
    #: Stable across retries of the same message, so the provider can deduplicate.
    idempotency_key: str
    #: The provider's id of the conversation, when one is known.
    provider_chat_id: str | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the message."""

    provider_message_id: str | None = None
    provider_chat_id: str | None = None


class SendFailed(HealthgateError):
    """The provider did not accept the message; ``failure`` says what that means."""

    def __init__(self, failure: Failure, detail: str, retry_after: timedelta | None = None) -> None:
        self.failure = failure
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{failure.value}: {detail}")


class Provider(Protocol):
    """Sends one message, or raises :class:`SendFailed`."""

    def send(self, message: Outbound) -> Sent: ...

    def close(self) -> None: ...


def retry_after(response: httpx.Response) -> timedelta | None:
    """The ``Retry-After`` hint of an answer: seconds, or an HTTP date."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return timedelta(seconds=max(float(value), 0))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment - datetime.now(UTC), timedelta(0))
