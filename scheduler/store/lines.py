"""Lines in the store, kept in step with the policy file."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

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


def line_facts(line: Line) -> LineFacts:
    """What the gate knows of a stored line."""
    return LineFacts(
        line.number, LineReputation(line.reputation), LineStatus(line.status), line.recovered_at
    )
