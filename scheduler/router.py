"""Which line a message goes out on: sticky for existing chats, healthiest for new ones."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.config import Policy
from policies.statuses import LineReputation, LineStatus
from scheduler.models import Chat, Line, Message

_RANK = {LineReputation.HEALTHY.value: 0, LineReputation.AT_RISK.value: 1}


def sticky_chat(session: Session, recipient: str) -> Chat | None:
    """The recipient's conversation on an enabled line (the most recently started one).

    Only chats something was sent on count: a chat created for a message that was then
    rerouted is no conversation to stick to.
    """
    return session.scalars(
        select(Chat)
        .join(Line, Line.id == Chat.line_id)
        .where(
            Chat.recipient == recipient,
            Line.enabled.is_(True),
            Chat.first_sent_at.is_not(None),
        )
        .order_by(Chat.first_sent_at.desc(), Chat.id.desc())
        .limit(1)
    ).one_or_none()


def lines_for_new_recipient(session: Session, policy: Policy, now: datetime) -> list[Line]:
    """Lines that may take a new recipient, best first.

    HEALTHY lines first, AT_RISK ones only when the policy allows it and no HEALTHY
    line exists, never CRITICAL or FLAGGED; then the most headroom under the daily cap.
    """
    lines = [
        line
        for line in session.scalars(select(Line).where(Line.enabled.is_(True)))
        if line.status == LineStatus.ACTIVE.value and line.reputation in _RANK
    ]
    healthy = [line for line in lines if line.reputation == LineReputation.HEALTHY.value]
    if healthy:
        candidates = healthy
    elif policy.line.at_risk_takes_new_recipients:
        candidates = lines
    else:
        return []
    sent_today = dict(
        session.execute(
            select(Message.line_id, func.count())
            .where(
                Message.line_id.in_([line.id for line in candidates]),
                Message.dispatched_at > now - timedelta(days=1),
            )
            .group_by(Message.line_id)
        ).all()
    )

    def headroom(line: Line) -> float:
        cap = policy.caps_for(line.number).sends_per_day
        return 1 - sent_today.get(line.id, 0) / cap

    return sorted(candidates, key=lambda line: (-headroom(line), line.id))
