"""What a provider's health answer means for one line: pure mappings, tested with tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from policies.errors import InvalidInput
from policies.statuses import (
    LineReputation,
    LineStatus,
    parse_field,
    parse_line_reputation,
    parse_line_status,
)


class CanSend(StrEnum):
    """360dialog's ``can_send_message`` for one entity, best first."""

    #: The entity meets every messaging requirement.
    AVAILABLE = "AVAILABLE"
    #: It may send, with limitations (``additional_info`` says which).
    LIMITED = "LIMITED"
    #: It cannot send (``errors`` say why and what to do).
    BLOCKED = "BLOCKED"


#: Worst first; the overall answer is the worst entity's (the provider's documented rule).
_SEVERITY = {CanSend.AVAILABLE: 0, CanSend.LIMITED: 1, CanSend.BLOCKED: 2}

#: The line's reputation for each answer: a BLOCKED entity pauses the line, a LIMITED one
#: slows it, as AT_RISK does for a Linq line.
REPUTATION_FOR = {
    CanSend.AVAILABLE: LineReputation.HEALTHY,
    CanSend.LIMITED: LineReputation.AT_RISK,
    CanSend.BLOCKED: LineReputation.CRITICAL,
}

#: Error fields kept per entity, so a person can see why and what to do.
_ERROR_FIELDS = ("error_code", "error_description", "possible_solution")


@dataclass(frozen=True, slots=True)
class D360Health:
    """One line's reading from 360dialog ``GET /health_status``."""

    can_send: CanSend
    reputation: LineReputation
    #: Per entity: type, id, can_send_message, additional_info, errors.
    detail: dict[str, Any]


def d360_health(payload: Mapping[str, Any]) -> D360Health:
    """Map a ``/health_status`` response to the line's reputation and the reasons.

    The line's answer is the worst of the top-level field and of every entity that
    governs a plain send (the number, its WhatsApp account, the business, the app), so
    neither a summary that misses an entity nor an entity the summary contradicts is
    lost. An entity that governs something else (a ``MESSAGE_TEMPLATE`` awaiting
    approval) does not pause the line, which sends plain text; it is kept in the detail,
    marked, so a person sees it.
    """
    health = payload.get("health_status")
    if not isinstance(health, Mapping):
        raise InvalidInput("health_status", health, "is not an object")
    entities = health.get("entities") or []
    if not isinstance(entities, list):
        raise InvalidInput("health_status.entities", entities, "is not a list")
    kept = [_entity(index, entity) for index, entity in enumerate(entities)]
    top = health.get("can_send_message")
    answers = [CanSend(e["can_send_message"]) for e in kept if e["governs_line"]]
    if top is not None or not kept:
        answers.append(_can_send("health_status.can_send_message", top))
    overall = max(answers, key=_SEVERITY.__getitem__, default=CanSend.AVAILABLE)
    detail = {"source": "360dialog", "can_send_message": overall.value, "entities": kept}
    return D360Health(overall, REPUTATION_FOR[overall], detail)


#: Entities whose status is not the line's: healthgate sends no templates.
_NOT_THE_LINE = frozenset({"MESSAGE_TEMPLATE"})


def _entity(index: int, entity: object) -> dict[str, Any]:
    where = f"health_status.entities[{index}]"
    if not isinstance(entity, Mapping):
        raise InvalidInput(where, entity, "is not an object")
    value = _can_send(f"{where}.can_send_message", entity.get("can_send_message"))
    kind = str(entity.get("entity_type", ""))
    kept: dict[str, Any] = {
        "entity_type": kind,
        "id": str(entity.get("id", "")),
        "can_send_message": value.value,
        # Whether this entity's status is the line's (see ``d360_health``).
        "governs_line": kind not in _NOT_THE_LINE,
    }
    if entity.get("additional_info"):
        kept["additional_info"] = entity["additional_info"]
    errors = entity.get("errors") or []
    if not isinstance(errors, list):
        raise InvalidInput(f"{where}.errors", errors, "is not a list")
    if errors:
        kept["errors"] = [
            {key: error.get(key) for key in _ERROR_FIELDS}
            for error in errors
            if isinstance(error, Mapping)
        ]
    return kept


def _can_send(field: str, value: object) -> CanSend:
    if isinstance(value, str) and value in CanSend.__members__:
        return CanSend(value)
    allowed = ", ".join(s.value for s in CanSend)
    raise InvalidInput(field, value, f"is not one of {allowed}")


@dataclass(frozen=True, slots=True)
class LinqLine:
    """One entry of Linq ``GET /v3/phone_numbers``, as far as the gate cares."""

    #: None when the entry carries neither ``reputation`` nor ``health_status``.
    reputation: LineReputation | None
    #: None when the entry carries no runtime ``status``.
    status: LineStatus | None


def linq_line(entry: Mapping[str, Any]) -> LinqLine:
    """Read one phone number entry; unknown values are bad input naming the field.

    ``reputation`` wins over its deprecated alias ``health_status``. Either is an object
    with a ``status`` (the SDK's shape) or, tolerated, the bare value.
    """
    field = "reputation" if entry.get("reputation") is not None else "health_status"
    raw = entry.get(field)
    if isinstance(raw, Mapping):
        field, raw = f"{field}.status", raw.get("status")
    reputation = None
    if raw is not None:
        reputation = parse_field(parse_line_reputation, field, str(raw))
    status = None
    raw_status = entry.get("status")
    if isinstance(raw_status, Mapping):
        raw_status = raw_status.get("status")
    if raw_status is not None:
        status = parse_field(parse_line_status, "status", str(raw_status))
    return LinqLine(reputation, status)
