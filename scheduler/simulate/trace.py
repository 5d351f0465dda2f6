"""A trace: what the application enqueued and what the outside world said, in time order.

Traces are streamed, never held: a synthetic world generates its enqueues day by day,
the store's history is read in pages, and a trace file (JSON lines) is read line by line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from policies.errors import cut, shown
from scheduler.simulate.world import WorldFileError


class Enqueue(NamedTuple):
    """The application enqueues one message."""

    at: datetime
    to: str
    body: str
    line: str | None = None
    key: str | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None


class Inbound(NamedTuple):
    """A recipient writes to a line: a reply, an opt-out or an opt-in."""

    at: datetime
    line: str
    recipient: str
    text: str


class LineReport(NamedTuple):
    """The provider reports a line's reputation (HEALTHY / AT_RISK / CRITICAL) or status
    (ACTIVE / FLAGGED), as of ``at``; it reaches healthgate at ``received``."""

    at: datetime
    line: str
    status: str
    received: datetime | None = None


class ChatReport(NamedTuple):
    """The provider reports a chat's health, as of ``at``, received at ``received``."""

    at: datetime
    line: str
    recipient: str
    status: str
    received: datetime | None = None


Event = Enqueue | Inbound | LineReport | ChatReport

#: The ``kind`` of each event in a trace file.
KINDS: dict[str, type[Event]] = {
    "enqueue": Enqueue,
    "inbound": Inbound,
    "line": LineReport,
    "chat": ChatReport,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}
_TIMES = {"at", "send_at", "expires_at", "received"}


def when(event: Event) -> datetime:
    """When healthgate learns of ``event``: a report's receipt, anything else's time."""
    if isinstance(event, LineReport | ChatReport) and event.received is not None:
        return event.received
    return event.at


def write_trace(events: Iterable[Event], out: TextIO) -> int:
    """Write ``events`` as JSON lines; how many."""
    count = 0
    for event in events:
        row: dict[str, Any] = {"kind": _KIND_OF[type(event)]}
        for name, value in event._asdict().items():
            if value is not None:
                row[name] = value.isoformat() if isinstance(value, datetime) else value
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def read_trace(path: Path) -> Iterator[Event]:
    """Stream the events of a trace file; a bad line is a ``WorldFileError`` naming the
    file, the line number and the key."""
    name = str(path)
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed by the generator)
    except FileNotFoundError:
        raise WorldFileError(name, "", "no such file") from None
    except OSError as exc:
        raise WorldFileError(name, "", f"cannot be read ({exc.strerror})") from None
    return _events(handle, name)


def _events(handle: TextIO, name: str) -> Iterator[Event]:
    previous: datetime | None = None
    with handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            event = parse_event(text, name, number)
            moment = when(event)
            if previous is not None and moment < previous:
                raise WorldFileError(
                    name, f"line {number}: at", "is earlier than the line before (keep time order)"
                )
            previous = moment
            yield event


def parse_event(text: str, name: str, number: int) -> Event:
    """One trace line as an event."""
    where = f"line {number}"
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise WorldFileError(name, where, f"is not JSON ({cut(str(exc))})") from None
    if not isinstance(row, dict):
        raise WorldFileError(name, where, "must be a JSON object")
    kind = row.pop("kind", None)
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WorldFileError(
            name, f"{where}: kind", f"must be one of {', '.join(KINDS)} (got {shown(kind)})"
        )
    fields = cls._fields
    for key in row:
        if key not in fields:
            raise WorldFileError(name, f"{where}: {cut(str(key))}", "unknown key")
    values: dict[str, Any] = {}
    required = [f for f in fields if f not in cls._field_defaults]
    for key in fields:
        value = row.get(key)
        if value is None:
            if key in required:
                raise WorldFileError(name, f"{where}: {key}", "is required")
            continue
        values[key] = _time(value, name, f"{where}: {key}") if key in _TIMES else value
        if key not in _TIMES and not isinstance(value, str):
            raise WorldFileError(name, f"{where}: {key}", f"must be text (got {shown(value)})")
    return cls(**values)


def _time(value: object, name: str, key: str) -> datetime:
    if not isinstance(value, str):
        raise WorldFileError(name, key, f"must be an ISO 8601 time (got {shown(value)})")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise WorldFileError(name, key, f"is not an ISO 8601 time (got {shown(value)})") from None
    if moment.tzinfo is None:
        raise WorldFileError(name, key, f"must carry a time zone (got {shown(value)})")
    return moment.astimezone(UTC)
