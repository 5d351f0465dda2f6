"""A policy change takes effect on what it held: messages held under a rule the change
altered are looked at again now, once, by the first worker that runs the new policy."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.orm import Session

from policies.changes import Affected, affected, diff, priorities
from policies.codes import Code
from policies.errors import cut
from policies.statuses import LineReputation
from scheduler.runtime import Loaded
from scheduler.store import transitions
from scheduler.store.models import FINAL_STATES, Line, Message
from scheduler.store.policy_state import Applied, applied, record_first, take_change

log = logging.getLogger(__name__)


def apply_policy_change(session: Session, loaded: Loaded, now: datetime, worker: str) -> int | None:
    """Release the messages held under a rule that ``loaded`` changed since the policy
    last applied, and record ``loaded`` as applied; how many were released. None when
    there was nothing to apply: the same policy, an older file (a worker that has not
    reloaded yet must not undo a change), or another worker applied it first."""
    mine = Applied(loaded.fingerprint, loaded.normal, loaded.mtime_ns)
    previous = applied(session)
    if previous is None:
        record_first(session, mine, now, worker)
        return None
    if previous.fingerprint == mine.fingerprint or previous.file_mtime_ns >= mine.file_mtime_ns:
        return None
    if not take_change(session, previous, mine, now, worker):
        return None
    changed = ", ".join(change.key for change in diff(previous.policy, mine.policy))
    reason = f"policy {mine.fingerprint} (was {previous.fingerprint}) changed {cut(changed)}"
    released = sum(
        len(
            transitions.release(
                session,
                _where(session, held, previous.policy, mine.policy, now),
                held.codes,
                now,
                Code.RELEASE_POLICY,
                reason,
            )
        )
        for held in affected(previous.policy, mine.policy)
    )
    reprioritise(session, priorities(previous.policy, mine.policy))
    log.info(
        "policy %s applied (was %s): %d held message(s) looked at again",
        mine.fingerprint,
        previous.fingerprint,
        released,
    )
    return released


def reprioritise(session: Session, changed: Mapping[str, int]) -> None:
    """Give the messages not yet finished of each category in ``changed`` its new
    priority: the claim orders by the value kept on the message."""
    for category, priority in changed.items():
        session.execute(
            update(Message)
            .where(
                Message.category == category,
                Message.state.not_in([state.value for state in FINAL_STATES]),
            )
            .values(priority=priority)
            .execution_options(synchronize_session=False)
        )


def _where(
    session: Session,
    held: Affected,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    now: datetime,
) -> ColumnElement[bool]:
    """The messages of the lines ``held`` names (every message when it names none)."""
    if held.paced:
        return Message.line_id.in_(_paced_lines(session, old, new, now))
    if held.lines is None:
        return true()
    return Message.line_id.in_(select(Line.id).where(Line.number.in_(sorted(held.lines))))


def _paced_lines(
    session: Session, old: Mapping[str, Any], new: Mapping[str, Any], now: datetime
) -> list[int]:
    """Lines whose caps run below their own under either policy: AT_RISK, or ramping up."""
    hours = max(_ramp_hours(old), _ramp_hours(new))
    return list(
        session.scalars(
            select(Line.id).where(
                or_(
                    Line.reputation == LineReputation.AT_RISK.value,
                    Line.recovered_at > now - timedelta(hours=hours),
                )
            )
        )
    )


def _ramp_hours(policy: Mapping[str, Any]) -> float:
    value = (policy.get("line") or {}).get("recovery_ramp_hours", 0)
    return float(value) if isinstance(value, int | float) else 0.0
