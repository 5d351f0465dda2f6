"""Which line a message goes out on: sticky for existing chats, healthiest for new ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from policies.config import Policy
from policies.gate import limits_for
from policies.pace import check, headroom
from policies.statuses import LineReputation, LineStatus
from policies.usage import LineUsage
from scheduler.store.lines import line_facts
from scheduler.store.models import Chat, Line
from scheduler.store.usage import load_usage

#: The recipient a new conversation is checked for: one the line has never sent to.
_NEW_RECIPIENT = ""


class Choice(NamedTuple):
    """A line that may take a new recipient, and when it can."""

    line: Line
    #: ``now`` when every cap has room for a new conversation now.
    allowed_at: datetime
    #: The smallest share left of any cap, 0 to 1.
    headroom: float


def sticky_chat(session: Session, recipient: str) -> Chat | None:
    """The recipient's conversation on an enabled line (the most recently started one).

    Only chats something was said on count, by us or by the recipient (the line they
    wrote to is theirs): a chat created for a message that was then rerouted is no
    conversation to stick to.
    """
    started = func.coalesce(Chat.first_sent_at, Chat.first_inbound_at)
    return session.scalars(
        select(Chat)
        .join(Line, Line.id == Chat.line_id)
        .where(Chat.recipient == recipient, Line.enabled.is_(True), started.is_not(None))
        .order_by(started.desc(), Chat.id.desc())
        .limit(1)
    ).one_or_none()


def rank_lines(session: Session, policy: Policy, now: datetime) -> list[Choice]:
    """Lines that may take a new recipient, best first.

    HEALTHY lines only, or AT_RISK ones when the policy allows it and no HEALTHY line
    exists; never CRITICAL or FLAGGED. Lines with room under every cap now come first,
    the most headroom first; lines at a cap follow, the one that frees up first first.
    """
    candidates = eligible_lines(
        session.scalars(select(Line).where(Line.enabled.is_(True)).order_by(Line.id)), policy
    )
    limits = {line.id: limits_for(line_facts(line), policy, now) for line in candidates}
    usage = load_usage(session, candidates, limits, now, headroom=1)
    return rank(candidates, usage, policy, now)


def eligible_lines(lines: Iterable[Line], policy: Policy) -> list[Line]:
    """The enabled lines that may take a new recipient, in the order given."""
    fit = [
        line
        for line in lines
        if line.enabled
        and line.status == LineStatus.ACTIVE.value
        and line.reputation in (LineReputation.HEALTHY.value, LineReputation.AT_RISK.value)
    ]
    healthy = [line for line in fit if line.reputation == LineReputation.HEALTHY.value]
    if healthy:
        return healthy
    return fit if policy.line.at_risk_takes_new_recipients else []


def rank(
    candidates: Sequence[Line], usage: Mapping[int, LineUsage], policy: Policy, now: datetime
) -> list[Choice]:
    """``candidates`` best first, from their usage (as :func:`rank_lines` orders them)."""
    limits = {line.id: limits_for(line_facts(line), policy, now) for line in candidates}
    choices = [
        Choice(
            line,
            check(usage[line.id], limits[line.id], _NEW_RECIPIENT, True, now).allowed_at,
            headroom(usage[line.id], limits[line.id], now),
        )
        for line in candidates
    ]
    return sorted(choices, key=lambda c: (c.allowed_at, -c.headroom, c.line.id))


def lines_for_new_recipient(session: Session, policy: Policy, now: datetime) -> list[Line]:
    """The lines of :func:`rank_lines`, best first."""
    return [choice.line for choice in rank_lines(session, policy, now)]


def chat_for(
    session: Session,
    line: Line,
    recipient: str,
    now: datetime,
    provider_chat_id: str | None = None,
) -> Chat:
    """The chat of ``line`` with ``recipient``, created HEALTHY when new."""
    chat = session.scalars(
        select(Chat).where(Chat.line_id == line.id, Chat.recipient == recipient)
    ).one_or_none()
    if chat is None:
        chat = Chat(
            line_id=line.id,
            recipient=recipient,
            provider_chat_id=provider_chat_id,
            health="HEALTHY",
            created_at=now,
        )
        session.add(chat)
        session.flush()
    elif provider_chat_id and chat.provider_chat_id is None:
        chat.provider_chat_id = provider_chat_id
    return chat
