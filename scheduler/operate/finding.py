"""Finding messages: a person's filters, checked and normalised, then the store's list."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from policies.codes import Code
from policies.durations import parse_moment
from policies.e164 import to_e164
from policies.errors import InvalidInput
from scheduler import constants
from scheduler.store import listing
from scheduler.store.models import MessageState

#: A moment as a caller gives it: a time, an age before now, or either as text.
Moment = datetime | timedelta | str


def find_messages(
    session: Session,
    now: datetime,
    *,
    to: str | None = None,
    line: str | None = None,
    state: str | None = None,
    reason: str | None = None,
    idempotency_key: str | None = None,
    newer_than: Moment | None = None,
    older_than: Moment | None = None,
    limit: int = constants.LIST_LIMIT,
) -> list[dict[str, Any]]:
    """Messages matching every filter given, newest first; bad input names its field."""
    where = listing.MessageFilter(
        state=None if state is None else parse_state(state),
        recipient=None if to is None else to_e164(to, "to"),
        line=None if line is None else to_e164(line, "line"),
        code=None if reason is None else parse_code(reason, "reason"),
        idempotency_key=idempotency_key,
        newer_than=_moment(newer_than, "newer_than", now),
        older_than=_moment(older_than, "older_than", now),
    )
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput("limit", limit, "must be a whole number")
    if not 1 <= limit <= constants.LIST_LIMIT_MAX:
        raise InvalidInput("limit", limit, f"must be from 1 to {constants.LIST_LIMIT_MAX}")
    return listing.messages(session, None, limit, where)


def parse_state(value: str) -> str:
    """A message state in any case (``FAILED``, ``failed``)."""
    try:
        return MessageState(value.strip().lower()).value
    except (ValueError, AttributeError):
        allowed = ", ".join(state.value for state in MessageState)
        raise InvalidInput("state", value, f"is not one of {allowed}") from None


def parse_code(value: str, field: str) -> str:
    """A decision's code (``cap_sends_per_minute``), in any case."""
    try:
        return Code(value.strip().lower()).value
    except (ValueError, AttributeError):
        raise InvalidInput(
            field, value, "is not a reason code, such as cap_sends_per_minute or chat_critical"
        ) from None


def _moment(value: Moment | None, field: str, now: datetime) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise InvalidInput(field, value, "must be a duration longer than zero")
        return now - value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(field, value, "must be a timezone-aware datetime")
        return value
    if isinstance(value, str):
        return parse_moment(value, field, now)
    raise InvalidInput(field, value, "must be a time, a duration, or either as text")
