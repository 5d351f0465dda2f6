"""Idempotency keys: a repeat of a message returns its id; a key reused for other
content is refused (Stripe's rule), naming the key and the field that differs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from policies.errors import IdempotencyConflict
from scheduler.intake.messages import Valid
from scheduler.store.bulk import rows_by_key
from scheduler.store.models import Line, Message

_MESSAGES = cast(Table, Message.__table__)

#: What a stored message's look-up by key reads: enough to compare it with a repeat.
KEY_COLUMNS = (
    "idempotency_key",
    "id",
    "recipient",
    "body",
    "pinned",
    "line_id",
    "send_at",
    "expires_at",
    "category",
    "recipient_tz",
)

#: Keys a pre-check reads a statement: well under SQLite's limit of bound values.
_KEYS_A_READ = 1000


def check_call(items: Sequence[Valid]) -> None:
    """Refuse two messages of one call with the same key and different content."""
    first: dict[str, Valid] = {}
    for item in items:
        if item.idempotency_key is None:
            continue
        earlier = first.setdefault(item.idempotency_key, item)
        if earlier is item:
            continue
        where = f"{earlier.where.rstrip('.')} of this call"
        named = (earlier.line is not None, earlier.line)
        times = (earlier.send_at, earlier.expires_at)
        kind = (earlier.category, earlier.recipient_tz)
        _compare(item, earlier.to, earlier.body, named, times, kind, where)


def check_stored(item: Valid, row: Any, line_numbers: Mapping[int, str]) -> None:
    """Refuse ``item`` when ``row`` (``KEY_COLUMNS`` of the stored message with its key)
    holds other content."""
    line = line_numbers.get(row.line_id) if row.pinned else None
    times = (_aware(row.send_at), _aware(row.expires_at))
    kind = (row.category, row.recipient_tz)
    _compare(item, row.recipient, row.body, (bool(row.pinned), line), times, kind, "the message")


def _aware(moment: datetime | None) -> datetime | None:
    """A stored time read by the driver itself (PostgreSQL's look-ups), not through the
    model's type, as the aware UTC time it is."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _compare(
    item: Valid,
    to: str,
    body: str,
    line: tuple[bool, str | None],
    times: tuple[datetime | None, datetime | None],
    kind: tuple[str, str | None],
    where: str,
) -> None:
    """The first field of ``item`` that differs from the first message's, as an error.

    A line counts only when the repeat names one: the first message must have named the
    same one. ``send_at`` counts as given: a repeat without it asks for now, which a
    message waiting for a later time is not (times compare as instants); so does
    ``expires_at``: a repeat without one asks that the message never expire; and the
    category and recipient's zone, which decide when it may go.
    """
    key = item.idempotency_key
    assert key is not None
    named, number = line
    differs: tuple[str, object, object] | None = None
    if item.to != to:
        differs = ("to", to, item.to)
    elif item.body != body:
        differs = ("body", body, item.body)
    elif item.line is not None and (not named or item.line != number):
        differs = ("line", number, item.line)
    elif item.send_at != times[0]:
        differs = ("send_at", times[0], item.send_at)
    elif item.expires_at != times[1]:
        differs = ("expires_at", times[1], item.expires_at)
    elif item.category != kind[0]:
        differs = ("category", kind[0], item.category)
    elif item.recipient_tz != kind[1]:
        differs = ("recipient_tz", kind[1], item.recipient_tz)
    if differs is not None:
        field, first, given = differs
        raise IdempotencyConflict(key, f"{item.where}{field}", first, given, where)


def check_all_stored(
    session: Session, items: Sequence[Valid], line_numbers: Mapping[int, str]
) -> set[str]:
    """Compare every keyed message of a call with the stored one of its key, before any
    part of the call is stored; the keys already stored."""
    by_key: dict[str, Valid] = {}
    for item in items:
        if item.idempotency_key is not None:
            by_key.setdefault(item.idempotency_key, item)
    keys = list(by_key)
    connection = session.connection()
    reads: list[Callable[[], list[Any]]] = [
        rows_by_key(
            connection,
            _MESSAGES,
            ("idempotency_key",),
            [(key,) for key in keys[start : start + _KEYS_A_READ]],
            KEY_COLUMNS,
        )
        for start in range(0, len(keys), _KEYS_A_READ)
    ]
    stored: set[str] = set()
    for read in reads:
        for row in read():
            check_stored(by_key[row.idempotency_key], row, line_numbers)
            stored.add(row.idempotency_key)
    return stored


def line_numbers(session: Session) -> dict[int, str]:
    """Every line's number by id, declared or not: what a stored message's line is."""
    return {line_id: number for line_id, number in session.execute(select(Line.id, Line.number))}
