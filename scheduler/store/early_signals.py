"""healthgate's own health signals, counted from what the store already keeps.

Nothing is written for them: a batch reads each with one grouped query over the windows
the caps already index (a line's dispatched messages by time, a chat's, the decisions by
time, the ledger by chat), for the lines and chats it decides on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import and_, distinct, func, or_, select
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.config import Policy
from policies.early_warning import (
    ChatSignals,
    Estimate,
    LineSignals,
    estimate_chat,
    estimate_line,
)
from policies.keywords import Inbound
from policies.statuses import ChatHealth
from policies.usage import DAY, HOUR
from scheduler.store.models import Chat, ConsentFact, DecisionRecord, Line, Message
from scheduler.store.usage import OURS

#: The provider's refusals of a send (403 and 429 and their kin), as decisions record them.
REFUSALS = (
    Code.PROVIDER_REJECTED,
    Code.PROVIDER_RATE_LIMITED,
    Code.PROVIDER_LINE_BLOCKED,
    Code.PROVIDER_OPTED_OUT,
)
_UNHEALTHY = (ChatHealth.AT_RISK.value, ChatHealth.CRITICAL.value)


def line_signals(
    session: Session, lines: Collection[Line], policy: Policy, now: datetime
) -> dict[int, LineSignals]:
    """Each line's signals at ``now``: three grouped queries for all of ``lines``."""
    ids = [line.id for line in lines]
    if not ids:
        return {}
    window = now - policy.early_warning.window
    in_window = Message.dispatched_at > window
    # Sends old enough to have had an answer: the reply rate's denominator.
    old_enough = and_(in_window, Message.dispatched_at <= now - policy.early_warning.reply_wait)
    hour = Message.dispatched_at > now - HOUR
    counted = session.execute(
        select(
            Message.line_id,
            func.count(distinct(Message.chat_id)).filter(in_window),
            func.count(distinct(Message.chat_id)).filter(old_enough),
            func.count(distinct(Message.chat_id)).filter(
                # A STOP is no engagement: a chat opted out does not count as replied.
                old_enough,
                Chat.last_inbound_at > Message.dispatched_at,
                Chat.opted_out_at.is_(None),
            ),
            func.count(distinct(Message.chat_id)).filter(
                in_window, Chat.first_sent_at > window, OURS
            ),
            # Of those new conversations, the ones that ended in an opt-out: a list
            # written to again and again opts out of old chats too, which would inflate
            # a rate over the few conversations it opens.
            func.count(distinct(Message.chat_id)).filter(
                in_window, Chat.first_sent_at > window, OURS, Chat.opted_out_at > window
            ),
            func.count(distinct(Message.chat_id)).filter(in_window, Chat.health.in_(_UNHEALTHY)),
            func.count(distinct(Message.chat_id)).filter(Chat.first_sent_at > now - DAY, OURS),
            func.count(distinct(Message.recipient)).filter(hour),
            func.count().filter(hour),
        )
        .join(Chat, Chat.id == Message.chat_id)
        .where(Message.line_id.in_(ids), Message.dispatched_at > min(window, now - DAY))
        .group_by(Message.line_id)
    )
    rows = {row[0]: row[1:] for row in counted}
    numbers = {line.id: line.number for line in lines}
    refused = _refusals(session, list(numbers.values()), now)
    spread = _same_body(session, ids, now)
    found = {}
    for line in lines:
        chats, answerable, replied, new, opted, unhealthy, new_day, recipients, sends = rows.get(
            line.id, (0,) * 9
        )
        caps = policy.caps_for(line.number)
        found[line.id] = LineSignals(
            chats=chats,
            answerable=answerable,
            replied=replied,
            new_chats=new,
            opted_out=opted,
            unhealthy=unhealthy,
            new_conversations_day=new_day,
            new_conversations_cap=caps.new_conversations_per_day,
            recipients_hour=recipients,
            recipients_cap=caps.distinct_recipients_per_hour,
            sends_hour=sends,
            rejections_hour=refused.get(line.number, 0),
            same_body_hour=spread.get(line.id, 0),
            same_body_cap=policy.content.same_body_max_recipients_per_hour,
        )
    return found


def _refusals(session: Session, numbers: list[str], now: datetime) -> dict[str, int]:
    """The provider's refusals of each line's sends over the last hour (from the
    decisions' time index), a refusal repeated on one message counted each time."""
    rows = session.execute(
        select(DecisionRecord.line, func.sum(DecisionRecord.repeats + 1))
        .where(
            DecisionRecord.at > now - HOUR,
            DecisionRecord.line.in_(numbers),
            DecisionRecord.code.in_([code.value for code in REFUSALS]),
        )
        .group_by(DecisionRecord.line)
    )
    return {line: int(count) for line, count in rows if line is not None}


def _same_body(session: Session, ids: list[int], now: datetime) -> dict[int, int]:
    """Recipients of each line's most spread body over the last hour."""
    per_body = (
        select(
            Message.line_id.label("line_id"),
            func.count(distinct(Message.recipient)).label("recipients"),
        )
        .where(
            Message.line_id.in_(ids),
            Message.dispatched_at > now - HOUR,
            Message.body_hash.is_not(None),
        )
        .group_by(Message.line_id, Message.body_hash)
        .subquery()
    )
    rows = session.execute(
        select(per_body.c.line_id, func.max(per_body.c.recipients)).group_by(per_body.c.line_id)
    )
    return {line_id: int(most) for line_id, most in rows}


def chat_signals(
    session: Session, chats: Mapping[int, Chat], policy: Policy, now: datetime
) -> dict[int, ChatSignals]:
    """Each chat's signals at ``now``: two grouped queries for all of ``chats``."""
    ids = sorted(chats)
    if not ids:
        return {}
    since = now - policy.early_warning.chat_window
    sent = session.execute(
        select(
            Message.chat_id,
            func.count(),
            func.count().filter(
                or_(Chat.last_inbound_at.is_(None), Message.dispatched_at > Chat.last_inbound_at)
            ),
        )
        .join(Chat, Chat.id == Message.chat_id)
        .where(Message.chat_id.in_(ids), Message.dispatched_at > since)
        .group_by(Message.chat_id)
    )
    sends = {chat_id: (count, unanswered) for chat_id, count, unanswered in sent}
    replied = session.execute(
        select(ConsentFact.chat_id, func.count())
        .where(
            and_(
                ConsentFact.chat_id.in_(ids),
                ConsentFact.at > since,
                ConsentFact.kind == Inbound.REPLY.value,
            )
        )
        .group_by(ConsentFact.chat_id)
    )
    replies = {chat_id: count for chat_id, count in replied}
    found = {}
    for chat_id in ids:
        chat = chats[chat_id]
        count, unanswered = sends.get(chat_id, (0, 0))
        found[chat_id] = ChatSignals(
            unanswered=unanswered,
            sends=count,
            replies=replies.get(chat_id, 0),
            last_reply_at=chat.last_inbound_at,
            first_sent_at=chat.first_sent_at,
        )
    return found


def line_estimates(
    session: Session, lines: Collection[Line], policy: Policy, now: datetime
) -> dict[int, Estimate]:
    """The estimate of each of ``lines`` at ``now``."""
    return {
        line_id: estimate_line(signals, policy, now)
        for line_id, signals in line_signals(session, lines, policy, now).items()
    }


def chat_estimates(
    session: Session, chats: Mapping[int, Chat], policy: Policy, now: datetime
) -> dict[int, Estimate]:
    """The estimate of each of ``chats`` at ``now``."""
    return {
        chat_id: estimate_chat(signals, policy.early_warning, now)
        for chat_id, signals in chat_signals(session, chats, policy, now).items()
    }


__all__ = [
    "REFUSALS",
    "chat_estimates",
    "chat_signals",
    "line_estimates",
    "line_signals",
]
