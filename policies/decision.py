"""The value every policy returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from policies.codes import Code
from policies.statuses import Action


class Queue(StrEnum):
    """Whose messages a rate rule lets through one after another."""

    #: Every message on the line (a line's caps).
    LINE = "line"
    #: The messages to one recipient on the line (a chat's caps and throttle).
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class Pace:
    """How a rate rule lets held messages through: one every ``interval`` (its window
    over its limit), each queue on its own."""

    queue: Queue
    interval: timedelta


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision on one message: what to do, why, and until when."""

    action: Action
    #: Short machine-readable cause, stable across releases (e.g. ``chat_at_risk``).
    code: Code
    #: Sentence for a person reading ``healthgate explain``.
    reason: str
    #: For THROTTLE and DEFER: the earliest moment to look at the message again.
    not_before: datetime | None = None
    #: For a THROTTLE on a rate: the pace it lets messages through at. The scheduler
    #: spaces the messages it holds on the same queue that far apart, so each is looked at
    #: again when it may go rather than all of them at the moment the first may.
    pace: Pace | None = field(default=None, compare=False)


def send() -> Decision:
    return Decision(Action.SEND, Code.OK, "chat and line are fit to send")
