"""Text and times every store can keep: what PostgreSQL and SQLite refuse is bad input."""

from __future__ import annotations

from datetime import UTC, datetime

from policies.errors import InvalidInput


def storable_text(value: str, field: str) -> str:
    """``value`` unchanged, or ``InvalidInput`` naming ``field`` when no store can keep it.

    PostgreSQL refuses NUL in text, and neither store can encode a lone surrogate (which
    a Python ``str`` may hold, e.g. from ``os.fsdecode``) as UTF-8.
    """
    if "\x00" in value:
        raise InvalidInput(field, value, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(field, value, f"is not valid Unicode ({exc.reason})") from None
    return value


def storable_time(value: datetime, field: str) -> datetime:
    """``value`` unchanged, or ``InvalidInput`` when it has no UTC time to store."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(field, value, "is out of range once converted to UTC") from None
    return value
