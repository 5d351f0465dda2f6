"""Recording what was decided on a message, and the state each decision leaves it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from policies.decision import Decision
from policies.statuses import Action
from scheduler.store.models import DecisionRecord, Message, MessageState

#: Message state after each gate action.
STATE_AFTER = {
    Action.SEND: MessageState.SENDING,
    Action.THROTTLE: MessageState.THROTTLED,
    Action.DEFER: MessageState.DEFERRED,
    Action.DROP: MessageState.DROPPED,
    Action.EXPIRE: MessageState.EXPIRED,
    Action.FAIL: MessageState.FAILED,
}


@dataclass
class Report:
    """What one dispatch pass did, by outcome."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n

    def merge(self, other: Report) -> None:
        for outcome, n in other.counts.items():
            self.add(outcome, n)


def decision_row(
    message: Message, decision: Decision, now: datetime, line: str | None
) -> dict[str, Any]:
    """One decision on one message as the columns of its record, to insert many at once."""
    return {
        "message_id": message.id,
        "at": now,
        "action": decision.action.value,
        "code": decision.code,
        "reason": decision.reason,
        "not_before": decision.not_before,
        "line": line,
    }


def record_decision(
    session: Session, message: Message, decision: Decision, now: datetime, line: str | None
) -> None:
    """Keep one decision on one message, for ``explain``."""
    session.add(
        DecisionRecord(
            message_id=message.id,
            at=now,
            action=decision.action.value,
            code=decision.code,
            reason=decision.reason,
            not_before=decision.not_before,
            line=line,
        )
    )
