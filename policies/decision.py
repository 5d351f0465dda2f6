"""The value every policy returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from policies.codes import Code
from policies.statuses import Action


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


def send() -> Decision:
    return Decision(Action.SEND, Code.OK, "chat and line are fit to send")
