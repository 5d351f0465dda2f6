"""Read-only views for people: the state of lines, chats and messages, and why."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from policies.config import Policy
from policies.errors import InvalidInput
from policies.hours import line_hours, rules_of, window_text
from policies.windows import recipient_zones
from scheduler.store import backlog, outcomes
from scheduler.store.early_signals import chat_estimates, line_estimates
from scheduler.store.models import WAITING_STATES, Chat, Line, Message
from scheduler.store.policy_state import applied, workers
from scheduler.store.transitions import (
    ENQUEUED,
    LINE_HOLDS,
    DecisionRow,
    read_decisions,
    record,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def status(
    session: Session,
    now: datetime,
    policy: Policy,
    tick: timedelta,
    callback: str | None = None,
) -> dict[str, Any]:
    """Lines with their reputation, caps in use, queue and estimate; chats by health,
    messages by state, the waiting messages of every line by state and reason; and the
    outcomes not yet told to ``callback`` (the application's, as settings name it)."""
    sent_today = dict(
        session.execute(
            select(Message.line_id, func.count())
            .where(Message.dispatched_at > now - timedelta(days=1))
            .group_by(Message.line_id)
        ).all()
    )
    rows = list(session.scalars(select(Line).order_by(Line.id)))
    pressure, waiting = backlog.lines(session, rows, policy, now)
    # healthgate's own estimate beside the provider's reputation, whatever the mode
    # (under ``off`` it is what ``shadow`` would weigh).
    estimates = line_estimates(session, rows, policy, now)
    lines = [
        {
            "number": line.number,
            "provider": line.provider,
            "enabled": line.enabled,
            "reputation": line.reputation,
            "reputation_updated_at": _iso(line.reputation_updated_at),
            "health_estimate": estimates[line.id].as_json(),
            "status": line.status,
            "status_updated_at": _iso(line.status_updated_at),
            # Its pace ramps up from here (``line.recovery_ramp_hours``).
            "recovered_at": _iso(line.recovered_at),
            "dispatched_24h": sent_today.get(line.id, 0),
            "detail": line.detail,
            # Why its messages wait and when they go (``store.backlog``).
            **more,
        }
        for line, more in zip(rows, pressure, strict=True)
    ]
    health = case((Chat.opted_out_at.is_not(None), "OPTED_OUT"), else_=Chat.health)
    chats: dict[str, int] = dict(
        session.execute(select(health, func.count()).group_by(health)).all()
    )
    states = dict(
        session.execute(select(Message.state, func.count()).group_by(Message.state)).all()
    )
    fingerprint, seen = policy_in_force(session, now, tick)
    return {
        "now": now.isoformat(),
        "lines": lines,
        "chats": chats,
        "messages": states,
        "waiting": waiting,
        # The policy applied to held messages, and the one each worker runs.
        "policy": {"applied": fingerprint},
        # What the gate does with the estimate: off, shadow or enforce.
        "early_warning": policy.early_warning.mode.value,
        "workers": seen,
        # The outbox of final states: what the application's callback has not taken yet.
        "outcomes": {"callback": callback, **outcomes.summary(session, now)},
    }


def policy_in_force(
    session: Session, now: datetime, tick: timedelta
) -> tuple[str | None, list[dict[str, Any]]]:
    """The fingerprint of the policy applied to held messages (None before any), and
    every worker seen with the one it runs, stale ones (not seen for a few ``tick``s)
    marked."""
    current = applied(session)
    seen = [
        {**worker._asdict(), "last_seen": worker.last_seen.isoformat()}
        for worker in workers(session, now, tick)
    ]
    return (current.fingerprint if current else None), seen


def explain(
    session: Session,
    message_id: str,
    policy: Policy | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every decision taken on one message, oldest first; with ``policy``, the hours it
    may go in as well, and with ``now`` too, its line's and chat's health as the
    provider says and as healthgate estimates."""
    message = session.get(Message, message_id)
    if message is None:
        raise InvalidInput("id", message_id, "no message has this id")
    line = session.get(Line, message.line_id) if message.line_id is not None else None
    decisions = read_decisions(session, message_id)
    held_by_line = (
        line is not None
        and message.state in {s.value for s in WAITING_STATES}
        and message.last_code in LINE_HOLDS
    )
    return {
        "id": message.id,
        "to": message.recipient,
        "line": line.number if line else None,
        "state": message.state,
        "not_before": _iso(message.not_before),
        "expires_at": _iso(message.expires_at),
        "attempts": message.attempts,
        "idempotency_key": message.idempotency_key,
        "category": message.category,
        "priority": message.priority,
        "recipient_tz": message.recipient_tz,
        "sending_hours": _hours(message, line, policy) if policy is not None else None,
        "created_at": _iso(message.created_at),
        "sent_at": _iso(message.sent_at),
        # When retention emptied its body; its decisions below are kept.
        "purged_at": _iso(message.purged_at),
        # Why the line holds the message, in the provider's words, while it does.
        "line_health": _line_health(line) if held_by_line and line else None,
        "health": _health(session, message, line, policy, now) if policy and now else None,
        "decisions": [_decision(d) for d in _with_enqueue(message, line, decisions)],
        # Each final state it reached, and whether the application's callback has it.
        "outcomes": outcomes.of_message(session, message_id),
    }


def _hours(message: Message, line: Line | None, policy: Policy) -> dict[str, Any]:
    """The window a message goes in, the zones it is read in, and its line's hours."""
    rules = rules_of(policy, message.category)
    ours = line_hours(policy, line.number) if line is not None else None
    return {
        "window": window_text(rules.hours),
        "time_zones": list(recipient_zones(message.recipient, message.recipient_tz))
        if rules.hours is not None
        else [],
        "line_hours": None if ours is None else f"{ours.window} {ours.zones[0]}",
    }


def _health(
    session: Session, message: Message, line: Line | None, policy: Policy, now: datetime
) -> dict[str, Any]:
    """The provider's status and healthgate's estimate of the message's line and chat."""
    chat = session.get(Chat, message.chat_id) if message.chat_id is not None else None
    found: dict[str, Any] = {"early_warning": policy.early_warning.mode.value}
    if line is not None:
        estimate = line_estimates(session, [line], policy, now)[line.id]
        found["line"] = {"provider": line.reputation, "estimate": estimate.as_json()}
    if chat is not None:
        provider = "OPTED_OUT" if chat.opted_out_at is not None else chat.health
        estimate = chat_estimates(session, {chat.id: chat}, policy, now)[chat.id]
        found["chat"] = {"provider": provider, "estimate": estimate.as_json()}
    return found


def _with_enqueue(
    message: Message, line: Line | None, decisions: list[DecisionRow]
) -> list[DecisionRow]:
    """``decisions`` with the enqueue first: a message sent on the line its application
    named keeps no enqueue record, its own row says all of it (see ``outbox``)."""
    action, code, reason = ENQUEUED
    if not message.pinned or any(d.action == action for d in decisions):
        return decisions
    enqueued = record(
        message.id,
        action,
        code,
        reason,
        message.created_at,
        not_before=message.send_at,
        line=line.number if line else None,
    )
    return [enqueued, *decisions]


def _decision(d: DecisionRow) -> dict[str, Any]:
    return {
        "at": _iso(d.at),
        "action": d.action,
        "code": d.code,
        "reason": d.reason,
        "not_before": _iso(d.not_before),
        "line": d.line,
        # The same decision taken again since, and the last time: counted, not stored.
        "repeats": d.repeats,
        "last_at": _iso(d.last_at),
        # Who or what asked, for a decision taken by hand (cancel, release, retry).
        "actor": d.actor,
    }


def _line_health(line: Line) -> dict[str, Any]:
    return {
        "reputation": line.reputation,
        "reputation_updated_at": _iso(line.reputation_updated_at),
        "status": line.status,
        "status_updated_at": _iso(line.status_updated_at),
        "detail": line.detail,
    }


def reasons(detail: dict[str, Any] | None) -> list[str]:
    """One readable line per provider reason kept in a line's detail."""
    found: list[str] = []
    for entity in (detail or {}).get("entities", []):
        kind = f"{entity.get('entity_type')} {entity.get('id')}".strip()
        if entity.get("governs_line") is False:
            kind += " (not the line's status: healthgate sends no templates)"
        state = entity.get("can_send_message")
        info = entity.get("additional_info")
        if info:
            text = "; ".join(map(str, info)) if isinstance(info, list) else str(info)
            found.append(f"{kind}: {state}: {text}")
        for error in entity.get("errors", []):
            found.append(
                f"{kind}: {state}: error {error.get('error_code')}: "
                f"{error.get('error_description')} (possible solution: "
                f"{error.get('possible_solution')})"
            )
    return found
