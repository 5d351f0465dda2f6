"""Chat health and line reputation and status, kept as facts with their own times, and
what follows at once when what the gate sees changes: releases.

Each report keeps the latest of its kind (by the report's own time, never by arrival)
and moves a latch: CRITICAL pauses until a *later* HEALTHY. What the gate reads
(``Chat.health``, ``Line.reputation``, ``Line.status``) is derived from those facts by
``policies.signals``, so any delivery order gives the same state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, true
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.config import Policy
from policies.errors import InvalidInput
from policies.signals import (
    chat_health,
    latest,
    line_reputation,
    line_status,
    not_ahead,
    supersedes,
)
from policies.statuses import (
    ChatHealth,
    LineReputation,
    LineStatus,
    parse_chat_health,
    parse_field,
    parse_line_reputation,
    parse_line_status,
)
from scheduler.signals import consent
from scheduler.store import transitions
from scheduler.store.lines import get_line
from scheduler.store.models import Chat, Line, Message
from scheduler.store.transitions import CHAT_HOLDS, LINE_HOLDS, ROUTE_HOLDS

#: Who a signal came from when nobody says: a person, through the CLI or the client.
BY_HAND = "set by hand"


def set_chat_health(
    session: Session,
    policy: Policy,
    line_number: str,
    recipient: str,
    status: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = BY_HAND,
) -> bool:
    """Record a report of a chat's health; whether what the gate sees (or the latest
    report) changed.

    OPTED_OUT is an opt-out fact for the ledger. A person may not set the health of a
    chat whose recipient opted out: only an opt-in clears an opt-out, and a person who
    sets HEALTHY there would expect it to.
    """
    health = parse_field(parse_chat_health, "status", status)
    stamp = _stamp(updated_at, now, policy)
    chat = consent.chat_of(session, line_number, recipient, now)
    if health is ChatHealth.OPTED_OUT:
        consent.opt_out(session, policy, chat, stamp, now, source)
        return True
    since = consent.opted_out(session, policy, chat)
    if source == BY_HAND and since is not None:
        keyword = policy.opt_out.opt_in_keywords[0] if policy.opt_out.opt_in_keywords else "OPTIN"
        raise InvalidInput(
            "status",
            status,
            f"the recipient opted out at {since.isoformat()}: only an opt-in clears it "
            f"(an inbound {keyword}: healthgate inbound {line_number} {chat.recipient} {keyword})",
        )
    changed = supersedes(health, stamp, chat.reported_health, chat.health_updated_at)
    if changed:
        chat.reported_health, chat.health_updated_at = health.value, stamp
    if health is ChatHealth.CRITICAL:
        chat.critical_at = latest(stamp, chat.critical_at)
    if health is ChatHealth.HEALTHY:
        chat.healthy_at = latest(stamp, chat.healthy_at)
    return _derive_chat(session, chat, now, source) or changed


def _derive_chat(session: Session, chat: Chat, now: datetime, source: str) -> bool:
    """Recompute the chat's bucket from its facts; whether it changed."""
    derived = chat_health(chat.reported_health, chat.critical_at, chat.healthy_at)
    if derived.value == chat.health:
        return False
    chat.health = derived.value
    if derived is ChatHealth.HEALTHY:
        chat.recovered_at = now
        # Released to the gate, whose caps (per recipient, per line) pace the backlog.
        transitions.release(
            session,
            Message.chat_id == chat.id,
            CHAT_HOLDS,
            now,
            Code.RELEASE_CHAT,
            f"chat is HEALTHY ({source})",
        )
    return True


def set_line_reputation(
    session: Session,
    policy: Policy,
    line_number: str,
    reputation: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = BY_HAND,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Record a report of a line's reputation; whether the latest report or what the
    gate sees changed. CRITICAL pauses the line until a later HEALTHY."""
    value = parse_field(parse_line_reputation, "status", reputation)
    stamp = _stamp(updated_at, now, policy)
    line = _lock_line(session, line_number)
    changed = supersedes(value, stamp, line.reported_reputation, line.reputation_updated_at)
    if changed:
        line.reported_reputation, line.reputation_updated_at = value.value, stamp
        if detail is not None:
            line.detail = detail
    if value is LineReputation.CRITICAL:
        line.critical_at = latest(stamp, line.critical_at)
    if value is LineReputation.HEALTHY:
        line.healthy_at = latest(stamp, line.healthy_at)
    return _derive_line(session, line, now, source) or changed


def set_line_status(
    session: Session,
    policy: Policy,
    line_number: str,
    status: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = BY_HAND,
) -> bool:
    """Record a report of a line's runtime status (ACTIVE / FLAGGED); a later ACTIVE
    also lifts healthgate's own flag (see ``block_line``)."""
    value = parse_field(parse_line_status, "status", status)
    stamp = _stamp(updated_at, now, policy)
    line = _lock_line(session, line_number)
    changed = supersedes(value, stamp, line.reported_status, line.status_updated_at)
    if changed:
        line.reported_status, line.status_updated_at = value.value, stamp
    if value is LineStatus.ACTIVE:
        line.active_at = latest(stamp, line.active_at)
    return _derive_line(session, line, now, source) or changed


def block_line(session: Session, line: Line, now: datetime, source: str) -> None:
    """healthgate's own flag: a send's answer said the line cannot send (Linq 2027).

    The line sends nothing until a later ACTIVE: from the provider's webhook or poll,
    or from a person who checked (``healthgate health line LINE ACTIVE``).
    """
    locked = session.scalars(select(Line).where(Line.id == line.id).with_for_update()).one()
    locked.blocked_at = latest(now, locked.blocked_at)
    _derive_line(session, locked, now, source)


def unblock_line(session: Session, line: Line, at: datetime, source: str) -> None:
    """A send accepted at ``at`` shows the line can send: as an ACTIVE from then."""
    line.active_at = latest(at, line.active_at)
    _derive_line(session, line, at, source)


def _derive_line(session: Session, line: Line, now: datetime, source: str) -> bool:
    """Recompute what the gate sees of the line; whether it changed."""
    reputation = line_reputation(line.reported_reputation, line.critical_at, line.healthy_at)
    status = line_status(line.reported_status, line.active_at, line.blocked_at)
    if reputation.value == line.reputation and status.value == line.status:
        return False
    was_fit = _fit(line)
    line.reputation, line.status = reputation.value, status.value
    if _fit(line) and not was_fit:
        # A line back to HEALTHY and ACTIVE ramps its pace up from now (policies.pace).
        line.recovered_at = now
    _release_line(session, line, now, source)
    return True


def _fit(line: Line) -> bool:
    return (
        line.reputation == LineReputation.HEALTHY.value and line.status == LineStatus.ACTIVE.value
    )


def _release_line(session: Session, line: Line, now: datetime, source: str) -> None:
    if line.status != LineStatus.ACTIVE.value:
        return
    if line.reputation == LineReputation.HEALTHY.value:
        transitions.release(
            session,
            Message.line_id == line.id,
            LINE_HOLDS,
            now,
            Code.RELEASE_LINE,
            f"line {line.number} can send again ({source})",
        )
    if line.reputation != LineReputation.CRITICAL.value:
        # Messages waiting for any line that takes new recipients try again.
        transitions.release(
            session,
            true(),
            ROUTE_HOLDS,
            now,
            Code.RELEASE_LINE,
            f"line {line.number} may take new recipients ({source})",
        )


def _stamp(updated_at: datetime | None, now: datetime, policy: Policy) -> datetime:
    if updated_at is None:
        return now
    return not_ahead(updated_at, "updated_at", now, policy.signals.time_tolerance)


def _lock_line(session: Session, number: str) -> Line:
    line = get_line(session, number)
    return session.scalars(select(Line).where(Line.id == line.id).with_for_update()).one()
