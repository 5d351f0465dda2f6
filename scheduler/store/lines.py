"""Lines in the store, kept in step with the policy file."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from policies.config import Policy
from policies.e164 import to_e164
from policies.errors import InvalidInput
from policies.gate import LineFacts
from policies.statuses import LineReputation, LineStatus
from scheduler.store.models import Line

NOT_DECLARED = "is not a line declared in the policy file"


def sync_lines(session: Session, policy: Policy, now: datetime) -> dict[str, Line]:
    """Add newly declared lines, update providers, disable lines no longer declared.

    Returns the declared (so enabled) lines by number, for callers that would
    otherwise read them again.
    """
    declared = {line.number: line for line in policy.lines}
    existing = {line.number: line for line in session.scalars(select(Line))}
    enabled: dict[str, Line] = {}
    for number, config in declared.items():
        row = existing.get(number)
        if row is None:
            row = Line(number=number, provider=config.provider, created_at=now)
            session.add(row)
        else:
            row.provider = config.provider
            row.enabled = True
        enabled[number] = row
    for number, row in existing.items():
        if number not in declared:
            row.enabled = False
    session.flush()
    return enabled


def get_line(session: Session, number: str, field: str = "line") -> Line:
    """The declared line ``number``, or an error naming the field and the value."""
    normalized = to_e164(number, field)
    line = session.scalars(select(Line).where(Line.number == normalized)).one_or_none()
    if line is None or not line.enabled:
        raise InvalidInput(field, number, NOT_DECLARED)
    return line


def declared_lines(lines: Mapping[str, Line], numbers: Mapping[str, str]) -> dict[str, Line]:
    """The lines of ``numbers`` (E.164, each with the field that first names it) among the
    declared ``lines``; one not declared is an error naming its field."""
    for number, field in numbers.items():
        if number not in lines:
            raise InvalidInput(field, number, NOT_DECLARED)
    return {number: lines[number] for number in numbers}


def line_facts(line: Line, probe_at: datetime | None = None) -> LineFacts:
    """What the gate knows of a stored line (``probe_at``: see ``next_probe``)."""
    return LineFacts(
        line.number,
        LineReputation(line.reputation),
        LineStatus(line.status),
        line.recovered_at,
        probe_at=probe_at,
    )


def next_probe(line: Line, policy: Policy) -> datetime | None:
    """When a line FLAGGED by healthgate alone may next send one message as a probe: a
    probe interval after its flag, and after the last probe. None for any other line."""
    if line.status != LineStatus.FLAGGED.value or line.reported_status == LineStatus.FLAGGED:
        return None
    if line.blocked_at is None:
        return None
    last = max(line.blocked_at, line.probe_at or line.blocked_at)
    return last + policy.line.probe_after


def claim_probe(session: Session, line: Line, policy: Policy, now: datetime) -> bool:
    """Take the line's probe now; False when another dispatcher took it first."""
    since = now - policy.line.probe_after
    claimed = session.execute(
        update(Line)
        .where(
            Line.id == line.id,
            Line.blocked_at <= since,
            or_(Line.probe_at.is_(None), Line.probe_at <= since),
        )
        .values(probe_at=now)
        .returning(Line.id)
        .execution_options(synchronize_session=False)
    ).first()
    if claimed is not None:
        set_committed_value(line, "probe_at", now)
    return claimed is not None
