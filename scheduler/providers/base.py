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

    #: The provider sends a given idempotency key once only, so a message whose first
    #: attempt was never confirmed may be sent again with the same key. False: a second
    #: attempt could deliver twice, so an unconfirmed send goes to a person instead.
    deduplicates: bool

    def send(self, message: Outbound) -> Sent: ...

    def close(self) -> None: ...
