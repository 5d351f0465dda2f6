"""The status vocabularies shared by the gate, the store and the providers."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from policies.errors import InvalidInput, shown

T = TypeVar("T")


class ChatHealth(StrEnum):
    """Health of one conversation, as a provider (or a person) reports it."""

    #: A normal conversation: send, within the line's caps.
    HEALTHY = "HEALTHY"
    #: Weak engagement: throttle until the recipient replies.
    AT_RISK = "AT_RISK"
    #: Messages are not landing: hold everything until HEALTHY again.
    CRITICAL = "CRITICAL"
    #: The recipient asked to stop: drop, terminal until an opt-in.
    OPTED_OUT = "OPTED_OUT"


class LineReputation(StrEnum):
    """Standing of one sending line; there is deliberately no OPTED_OUT."""

    #: Good standing: send and take new recipients.
    HEALTHY = "HEALTHY"
    #: Trending down: run at a fraction of the caps, prefer other lines for new recipients.
    AT_RISK = "AT_RISK"
    #: Pause outbound until HEALTHY; route new recipients elsewhere.
    CRITICAL = "CRITICAL"


class LineStatus(StrEnum):
    """Runtime status of a line at its provider, separate from its reputation."""

    #: The provider lets the line send.
    ACTIVE = "ACTIVE"
    #: The provider has flagged the line: it sends nothing.
    FLAGGED = "FLAGGED"


class Action(StrEnum):
    """What the gate (or the provider's answer) did with one message at one moment."""

    #: Dispatch now.
    SEND = "SEND"
    #: Retry at a computed time.
    THROTTLE = "THROTTLE"
    #: Hold until health recovers (or the hold expires).
    DEFER = "DEFER"
    #: Terminal: never send (opt-out).
    DROP = "DROP"
    #: Choose another line before sending.
    REROUTE = "REROUTE"
    #: Terminal: the message outlived its deadline.
    EXPIRE = "EXPIRE"
    #: Terminal: the provider refused it for good.
    FAIL = "FAIL"
    # The steps of a message's life the store records besides the gate's decisions; the
    # gate never returns them (``scheduler.store.transitions`` says what each one moves).
    #: Stored by the application's enqueue.
    ENQUEUE = "ENQUEUE"
    #: Leased to one dispatch task (not recorded: the lease is on the message).
    CLAIM = "CLAIM"
    #: Back to the queue: its lease ran out before it was dispatched (not recorded).
    REQUEUE = "REQUEUE"
    #: The provider accepted it.
    SENT = "SENT"
    #: A held message looked at again now: a signal ended what held it.
    RELEASE = "RELEASE"
    #: A send never confirmed, sent again with its key or handed to a person.
    RECONCILE = "RECONCILE"
    #: A person (or a program) asked that a message not yet sending never be sent.
    CANCEL = "CANCEL"
    #: A person looked at a failed or unconfirmed send and asked for it to go again.
    RETRY = "RETRY"


def parse_chat_health(value: str) -> ChatHealth:
    """Parse a chat status, naming the value when it is not one."""
    try:
        return ChatHealth(value)
    except ValueError:
        allowed = ", ".join(s.value for s in ChatHealth)
        raise ValueError(f"chat status {shown(value)} is not one of {allowed}") from None


def parse_line_reputation(value: str) -> LineReputation:
    """Parse a line reputation; OPTED_OUT is refused because it is per recipient."""
    if value == ChatHealth.OPTED_OUT.value:
        raise ValueError(
            "line reputation 'OPTED_OUT' is not valid: opt-out applies to a recipient, "
            "not to a line (allowed: HEALTHY, AT_RISK, CRITICAL)"
        )
    try:
        return LineReputation(value)
    except ValueError:
        allowed = ", ".join(s.value for s in LineReputation)
        raise ValueError(f"line reputation {shown(value)} is not one of {allowed}") from None


def parse_line_status(value: str) -> LineStatus:
    """Parse a line's runtime status, naming the value when it is not one."""
    try:
        return LineStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in LineStatus)
        raise ValueError(f"line status {shown(value)} is not one of {allowed}") from None


def parse_field(parser: Callable[[str], T], field: str, value: str) -> T:
    """Run one of the parsers above on the value of ``field``; bad input names both."""
    try:
        return parser(value)
    except ValueError as exc:
        raise InvalidInput(field, value, str(exc)) from None


#: What a line can be set to by hand: a reputation, or a status at the provider.
LINE_STATES: tuple[LineReputation | LineStatus, ...] = (*LineReputation, *LineStatus)


#: The category of a message enqueued without one (the policy file's
#: ``[categories.<name>]``; kept here, light enough for ``import scheduler``).
DEFAULT_CATEGORY = "transactional"
