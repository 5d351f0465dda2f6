"""A message's states and the groups of them the store, the reads and the commands use."""

from __future__ import annotations

from enum import StrEnum


class MessageState(StrEnum):
    """Where a message is in its life; the last six are final (a person may retry a
    ``failed`` or ``needs_review`` one)."""

    #: Waiting for its ``not_before`` (its ``send_at``, or now).
    QUEUED = "queued"
    #: Waiting for a computed time: a cap, an AT_RISK chat, a provider retry hint.
    THROTTLED = "throttled"
    #: Held until health recovers, or until the maximum hold / ``expires_at``.
    DEFERRED = "deferred"
    #: Leased to one dispatch task (fence token + lease expiry).
    CLAIMED = "claimed"
    #: Passed the gate; the provider call is under way or its answer not yet recorded.
    SENDING = "sending"
    #: The provider accepted it.
    SENT = "sent"
    #: Never to be sent: opt-out.
    DROPPED = "dropped"
    #: Outlived ``expires_at`` or the maximum hold.
    EXPIRED = "expired"
    #: The provider refused it for good, or retries ran out.
    FAILED = "failed"
    #: Its send was never confirmed and the provider cannot tell whether it went (no
    #: idempotency key): a person decides; never resent automatically.
    NEEDS_REVIEW = "needs_review"
    #: Someone asked, before it was sending, that it never be sent.
    CANCELLED = "cancelled"


WAITING_STATES = (MessageState.QUEUED, MessageState.THROTTLED, MessageState.DEFERRED)
FINAL_STATES = (
    MessageState.SENT,
    MessageState.DROPPED,
    MessageState.EXPIRED,
    MessageState.FAILED,
    MessageState.NEEDS_REVIEW,
    MessageState.CANCELLED,
)
#: Where a cancel may still stop a message: not yet handed to a provider.
CANCELLABLE_STATES = (*WAITING_STATES, MessageState.CLAIMED)
#: Where a person may send a message again.
RETRYABLE_STATES = (MessageState.FAILED, MessageState.NEEDS_REVIEW)
