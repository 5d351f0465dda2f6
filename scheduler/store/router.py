"""Which line a message goes out on: sticky for existing chats, healthiest for new ones."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
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


class Sticky(NamedTuple):
    """A recipient's conversation, as :func:`sticky_chats` reads it."""

    id: int
    line_id: int
    opted_out_at: datetime | None


def sticky_chats(session: Session, recipients: Collection[str]) -> dict[str, Sticky]:
    """Each recipient's conversation on an enabled line (the most recently started one),
    in one read for all of them.

    Only chats something was said on count, by us or by the recipient (the line they
    wrote to is theirs): a chat created for a message that was then rerouted is no
    conversation to stick to.
    """
    if not recipients:
        return {}
    started = func.coalesce(Chat.first_sent_at, Chat.first_inbound_at)
    rows = session.execute(
        select(Chat.recipient, Chat.id, Chat.line_id, Chat.opted_out_at, started)
        .join(Line, Line.id == Chat.line_id)
        .where(Chat.recipient.in_(set(recipients)), Line.enabled.is_(True), started.is_not(None))
        .order_by(started, Chat.id)
    )
    # Oldest first: the last row of a recipient is the one kept.
    return {row[0]: Sticky(row[1], row[2], row[3]) for row in rows}


class NewRecipients:
    """Lines for the new recipients of one enqueue call: each line's usage read once a
    call, and what the call assigns counted in memory, so one call spreads its new
    recipients over equally healthy lines by headroom, as dispatch would.

    A line with room under every cap now comes before one at a cap (the one that frees
    up first first); among those with room, the line with the most headroom once the
    recipients the call gave it are counted (each takes one send, one recipient and one
    new conversation of its caps). A recipient the call gave a line keeps it. Which lines
    may take a new recipient is asked anew for each transaction of the call.
    """

    def __init__(self, policy: Policy, now: datetime) -> None:
        self.policy = policy
        self.now = now
        #: The lines read so far, by id.
        self.lines: dict[int, _Standing] = {}
        #: New recipients given to each line by this call.
        self.assigned: dict[int, int] = {}
        #: The line each recipient was given by this call.
        self.chosen: dict[str, int] = {}

    def line_for(self, session: Session, recipient: str, declared: Iterable[Line]) -> Line | None:
        """The line for ``recipient``, counted as given; None when no line may take one.

        ``declared``: the enabled lines as the current transaction reads them.
        """
        candidates = eligible_lines(sorted(declared, key=lambda line: line.id), self.policy)
        if not candidates:
            return None
        by_id = {line.id: line for line in candidates}
        kept = self.chosen.get(recipient)
        if kept in by_id:
            return by_id[kept]
        missing = [line for line in candidates if line.id not in self.lines]
        if missing:
            self._read(session, missing)
        best = min(
            candidates,
            key=lambda line: (
                self.lines[line.id].allowed_at,
                self.lines[line.id].used(self.assigned.get(line.id, 0)),
                line.id,
            ),
        )
        self.assigned[best.id] = self.assigned.get(best.id, 0) + 1
        self.chosen[recipient] = best.id
        return best

    def _read(self, session: Session, lines: Sequence[Line]) -> None:
        now = self.now
        limits = {line.id: limits_for(line_facts(line), self.policy, now) for line in lines}
        usage = load_usage(session, lines, limits, now, headroom=1)
        for line in lines:
            caps, entry = limits[line.id], usage[line.id]
            self.lines[line.id] = _Standing(
                check(entry, caps, _NEW_RECIPIENT, True, now).allowed_at,
                (
                    (entry.sent_last_minute(now), caps.sends_per_minute),
                    (entry.day_count, caps.sends_per_day),
                    (entry.recipients_last_hour(now), caps.distinct_recipients_per_hour),
                    (entry.new_chats_last_day(now), caps.new_conversations_per_day),
                ),
            )


class _Standing(NamedTuple):
    """A line as :class:`NewRecipients` read it."""

    #: When every cap has room for a new conversation.
    allowed_at: datetime
    #: (count, cap) of each cap a new recipient uses.
    caps: tuple[tuple[int, int], ...]

    def used(self, assigned: int) -> float:
        """The largest share of a cap used, counting ``assigned`` more new recipients:
        past 1 when they overfill it, so lines keep taking turns."""
        return max((count + assigned) / cap for count, cap in self.caps)


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
    """``candidates`` best first, from their usage.

    HEALTHY lines only, or AT_RISK ones when the policy allows it and no HEALTHY line
    exists (see :func:`eligible_lines`); never CRITICAL or FLAGGED. Lines with room
    under every cap now come first, the most headroom first; lines at a cap follow, the
    one that frees up first first.
    """
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
