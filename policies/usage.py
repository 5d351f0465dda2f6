"""Sliding-window counters of what a line has sent, as the gate reads them."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def earliest_allowed(
    times: Sequence[datetime], limit: int, window: timedelta, now: datetime
) -> datetime:
    """The earliest moment one more event fits under ``limit`` per sliding ``window``.

    ``times`` is sorted oldest first. When the window already holds ``limit`` events,
    the next one fits once the oldest of the last ``limit`` has left the window.
    """
    inside = len(times) - bisect_right(times, now - window)
    if inside < limit:
        return now
    return times[len(times) - limit] + window


@dataclass(slots=True)
class LineUsage:
    """Dispatches of one line over the last day, kept by the caller and read by the gate.

    The scheduler loads it from the store (or Redis) and records each SEND as a batch
    progresses, so messages decided together still see each other.
    """

    #: Dispatch times of the line, oldest first.
    sends: list[datetime] = field(default_factory=list)
    #: First-dispatch times of the line's new conversations, oldest first.
    new_chats: list[datetime] = field(default_factory=list)
    #: Dispatch times per recipient over the last hour, oldest first.
    by_recipient: dict[str, list[datetime]] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        sends: Iterable[tuple[str, datetime]],
        new_chats: Iterable[datetime],
        now: datetime,
    ) -> LineUsage:
        """Build from (recipient, dispatched_at) rows and first-dispatch times."""
        usage = cls(new_chats=sorted(new_chats))
        for recipient, at in sorted(sends, key=lambda row: row[1]):
            usage.sends.append(at)
            if at > now - HOUR:
                usage.by_recipient.setdefault(recipient, []).append(at)
        return usage

    def record(self, recipient: str, at: datetime, *, new_chat: bool) -> None:
        """Count one dispatch."""
        insort(self.sends, at)
        insort(self.by_recipient.setdefault(recipient, []), at)
        if new_chat:
            insort(self.new_chats, at)

    def distinct_recipients_allowed(self, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment ``recipient`` fits under ``limit`` distinct recipients per hour."""
        start = now - HOUR
        latest = self.by_recipient.get(recipient)
        if latest and latest[-1] > start:
            return now  # already counted in this window: no new distinct recipient
        lasts = sorted(times[-1] for times in self.by_recipient.values() if times[-1] > start)
        return earliest_allowed(lasts, limit, HOUR, now)
