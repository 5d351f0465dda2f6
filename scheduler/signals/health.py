"""Changing chat health and line reputation, and what follows at once: drops and releases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from policies.codes import Code
from policies.config import OptOutScope, Policy
from policies.e164 import to_e164
from policies.keywords import Inbound, classify, reply_opts_in
from policies.statuses import (
    Action,
    ChatHealth,
    LineReputation,
    LineStatus,
    parse_chat_health,
    parse_field,
    parse_line_reputation,
    parse_line_status,
)
from scheduler.store import transitions
from scheduler.store.lines import get_line
from scheduler.store.models import WAITING_STATES, Chat, Line, Message, MessageState, OptOut
from scheduler.store.router import chat_for
from scheduler.store.transitions import CHAT_HOLDS, LINE_HOLDS, REPLY_HOLDS, ROUTE_HOLDS


def lock_chat(session: Session, chat: Chat) -> Chat:
    """Lock the chat row: opt-outs and dispatches of one chat serialize on it."""
    return session.scalars(select(Chat).where(Chat.id == chat.id).with_for_update()).one()


def set_chat_health(
    session: Session,
    policy: Policy,
    line_number: str,
    recipient: str,
    status: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = "set by hand",
) -> bool:
    """Set a chat's health; False when ``updated_at`` is older than what is stored.

    OPTED_OUT drops every waiting message of the chat (of the recipient, with the
    account scope); any other status set this way clears an opt-out, and HEALTHY
    releases the chat's held messages.
    """
    health = parse_field(parse_chat_health, "status", status)
    line = get_line(session, line_number)
    chat = lock_chat(session, chat_for(session, line, _recipient(recipient), now))
    stamp = updated_at or now
    if chat.health_updated_at is not None and stamp < chat.health_updated_at:
        return False
    chat.health_updated_at = stamp
    if health is ChatHealth.OPTED_OUT:
        opt_out(session, policy, chat, now, source)
        return True
    if chat.opted_out_at is not None:
        opt_in(session, chat)
    if health is ChatHealth.HEALTHY and chat.health != ChatHealth.HEALTHY.value:
        chat.recovered_at = now
    chat.health = health.value
    if health is ChatHealth.HEALTHY:
        # Released to the gate, whose caps (per recipient, per line) pace the backlog.
        release(
            session,
            and_(Message.chat_id == chat.id, Message.last_code.in_(CHAT_HOLDS)),
            now,
            Code.RELEASE_CHAT,
            f"chat is HEALTHY ({source})",
        )
    return True


def set_line_reputation(
    session: Session,
    line_number: str,
    reputation: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = "set by hand",
    detail: dict[str, Any] | None = None,
) -> bool:
    """Set a line's reputation; False when ``updated_at`` is older than what is stored."""
    value = parse_field(parse_line_reputation, "status", reputation)
    line = _lock_line(session, line_number)
    stamp = updated_at or now
    if line.reputation_updated_at is not None and stamp < line.reputation_updated_at:
        return False
    was_fit = _fit(line)
    line.reputation, line.reputation_updated_at = value.value, stamp
    _mark_recovery(line, was_fit, now)
    if detail is not None:
        line.detail = detail
    _release_line(session, line, now, source)
    return True


def set_line_status(
    session: Session,
    line_number: str,
    status: str,
    now: datetime,
    *,
    updated_at: datetime | None = None,
    source: str = "set by hand",
) -> bool:
    """Set a line's runtime status (ACTIVE / FLAGGED)."""
    value = parse_field(parse_line_status, "status", status)
    line = _lock_line(session, line_number)
    stamp = updated_at or now
    if line.status_updated_at is not None and stamp < line.status_updated_at:
        return False
    was_fit = _fit(line)
    line.status, line.status_updated_at = value.value, stamp
    _mark_recovery(line, was_fit, now)
    _release_line(session, line, now, source)
    return True


def record_inbound(
    session: Session,
    policy: Policy,
    line_number: str,
    recipient: str,
    text: str,
    now: datetime,
    *,
    at: datetime | None = None,
) -> Inbound:
    """Record a message from the recipient: a reply, an opt-out or an opt-in.

    ``at`` is when the recipient sent it (default ``now``); a late one never moves
    ``last_inbound_at`` back.
    """
    line = get_line(session, line_number)
    chat = lock_chat(session, chat_for(session, line, _recipient(recipient), now))
    kind = classify(text, policy.opt_out)
    sent = at or now
    if chat.last_inbound_at is None or sent > chat.last_inbound_at:
        chat.last_inbound_at = sent
    if kind is Inbound.OPT_OUT:
        opt_out(session, policy, chat, now, "inbound opt-out keyword")
        return kind
    if chat.opted_out_at is not None or _account_opt_out(session, chat.recipient):
        if kind is Inbound.REPLY and not reply_opts_in(policy.opt_out):
            return kind  # an ordinary reply does not clear an opt-out in this mode
        opt_in(session, chat)
    # A reply lifts the AT_RISK throttle: its messages are looked at again now.
    release(
        session,
        and_(Message.chat_id == chat.id, Message.last_code.in_(REPLY_HOLDS)),
        now,
        Code.RELEASE_REPLY,
        "the recipient replied",
    )
    return kind


def opt_out(session: Session, policy: Policy, chat: Chat, now: datetime, source: str) -> int:
    """Mark the opt-out and drop every waiting or claimed message it covers."""
    chat.opted_out_at = chat.opted_out_at or now
    if policy.opt_out.scope is OptOutScope.ACCOUNT:
        values = {"recipient": chat.recipient, "opted_out_at": now, "source": source[:200]}
        builder = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(builder(OptOut).values(values).on_conflict_do_nothing())
        covered: ColumnElement[bool] = Message.recipient == chat.recipient
    else:
        covered = Message.chat_id == chat.id
    # Claimed messages are dropped too: their dispatch task's fence then fails. A
    # message already SENDING was committed to go before this opt-out was recorded.
    ids = transitions.move_where(
        session,
        Action.DROP,
        covered,
        [*WAITING_STATES, MessageState.CLAIMED],
        now,
        Code.CHAT_OPTED_OUT,
        f"opted out ({source})",
        not_before=None,
        claim_token=None,
    )
    return len(ids)


def opt_in(session: Session, chat: Chat) -> None:
    """Clear the opt-out: the chat returns to the bucket its health says."""
    chat.opted_out_at = None
    session.execute(delete(OptOut).where(OptOut.recipient == chat.recipient))
    if chat.health == ChatHealth.OPTED_OUT.value:
        chat.health = ChatHealth.HEALTHY.value


def release(
    session: Session, which: ColumnElement[bool], now: datetime, code: Code, reason: str
) -> int:
    """Look at held messages again now; the gate (and its caps) decides what follows."""
    ids = transitions.move_where(
        session,
        Action.RELEASE,
        which,
        [MessageState.DEFERRED, MessageState.THROTTLED],
        now,
        code,
        reason,
        not_before=now,
        held_since=None,
    )
    return len(ids)


def _fit(line: Line) -> bool:
    return (
        line.reputation == LineReputation.HEALTHY.value and line.status == LineStatus.ACTIVE.value
    )


def _mark_recovery(line: Line, was_fit: bool, now: datetime) -> None:
    """A line back to HEALTHY and ACTIVE ramps its pace up from ``now`` (policies.pace)."""
    if _fit(line) and not was_fit:
        line.recovered_at = now


def _release_line(session: Session, line: Line, now: datetime, source: str) -> None:
    if line.status != LineStatus.ACTIVE.value:
        return
    if line.reputation == LineReputation.HEALTHY.value:
        release(
            session,
            and_(Message.line_id == line.id, Message.last_code.in_(LINE_HOLDS)),
            now,
            Code.RELEASE_LINE,
            f"line {line.number} can send again ({source})",
        )
    if line.reputation != LineReputation.CRITICAL.value:
        # Messages waiting for any line that takes new recipients try again.
        release(
            session,
            Message.last_code.in_(ROUTE_HOLDS),
            now,
            Code.RELEASE_LINE,
            f"line {line.number} may take new recipients ({source})",
        )


def _lock_line(session: Session, number: str) -> Line:
    line = get_line(session, number)
    return session.scalars(select(Line).where(Line.id == line.id).with_for_update()).one()


def _account_opt_out(session: Session, recipient: str) -> bool:
    return session.get(OptOut, recipient) is not None


def _recipient(value: str) -> str:
    return to_e164(value, "recipient")
