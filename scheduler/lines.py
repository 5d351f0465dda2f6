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
from scheduler.models import Line

NOT_DECLARED = "is not a line declared in the policy file"


def sync_lines(session: Session, policy: Policy, now: datetime) -> None:
    """Add newly declared lines, update providers, disable lines no longer declared."""
    declared = {line.number: line for line in policy.lines}
    existing = {line.number: line for line in session.scalars(select(Line))}
    for number, config in declared.items():
        row = existing.get(number)
        if row is None:
            session.add(Line(number=number, provider=config.provider, created_at=now))
        else:
            row.provider = config.provider
            row.enabled = True
    for number, row in existing.items():
        if number not in declared:
            row.enabled = False
    session.flush()


def get_line(session: Session, number: str, field: str = "line") -> Line:
    """The declared line ``number``, or an error naming the field and the value."""
    normalized = to_e164(number, field)
    line = session.scalars(select(Line).where(Line.number == normalized)).one_or_none()
    if line is None or not line.enabled:
        raise InvalidInput(field, number, NOT_DECLARED)
    return line


def declared_lines(session: Session, numbers: Mapping[str, str]) -> dict[str, Line]:
    """The declared lines of ``numbers`` (E.164, each with the field that first names it),
    loaded in one query; an unknown or disabled one is an error naming its field."""
    if not numbers:
        return {}
    lines = {
        line.number: line
        for line in session.scalars(select(Line).where(Line.number.in_(numbers)))
        if line.enabled
    }
    for number, field in numbers.items():
        if number not in lines:
            raise InvalidInput(field, number, NOT_DECLARED)
    return lines


def line_facts(line: Line) -> LineFacts:
    """What the gate knows of a stored line."""
    return LineFacts(
        line.number, LineReputation(line.reputation), LineStatus(line.status), line.recovered_at
    )
