"""Times and durations as people type them: ISO 8601 times with a zone, and ages such
as ``30d``; shared by the command line and the web's reads."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from policies.errors import InvalidInput


def parse_time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, value, "is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise InvalidInput(field, value, "needs a timezone, e.g. 2026-11-22T09:00:00+00:00")
    return moment


#: ``30d``, ``12h``, ``90m``, ``45s``: a whole number and its unit.
_DURATION = re.compile(r"([0-9]{1,9})([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
#: Past this, ``now - age`` would leave the calendar; no retention is meant that long.
_LONGEST = timedelta(days=36_500)


def parse_duration(value: str, field: str) -> timedelta:
    found = _DURATION.fullmatch(value.strip())
    if found is None:
        raise InvalidInput(field, value, "is not a duration such as 30d, 12h, 90m or 45s")
    age = timedelta(**{_UNITS[found[2]]: int(found[1])})
    if not age:
        raise InvalidInput(field, value, "is zero: say how old, such as 30d")
    if age > _LONGEST:
        raise InvalidInput(field, value, "is longer than 100 years")
    return age


def parse_moment(value: str, field: str, now: datetime) -> datetime:
    """An age (``30m``, ``2d``: that long before ``now``) or an ISO 8601 time."""
    if _DURATION.fullmatch(value.strip()):
        return now - parse_duration(value, field)
    try:
        moment = parse_time(value, field)
    except InvalidInput:
        raise InvalidInput(
            field, value, "is neither a duration such as 30m or 2d nor an ISO 8601 time"
        ) from None
    assert moment is not None
    return moment
