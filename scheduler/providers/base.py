"""The one interface every send provider implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from policies.errors import HealthgateError
from policies.outcome import Failure


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
