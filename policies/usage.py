"""Sliding-window counters of what a line has sent, as the gate reads them."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Sequence
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
    """Dispatches of one line, kept by the caller and read by the gate.

    The scheduler loads it from the store (or Redis) and records each SEND as a batch
    progresses, so messages decided together still see each other. The last hour is
    kept in full; the day only as a count, with its times loaded once the count comes
    near the daily cap (the times are needed only to say when the cap frees up).
    """

    #: Dispatch times over the last hour, oldest first.
    recent: list[datetime] = field(default_factory=list)
    #: Dispatches over the last day.
    day_count: int = 0
    #: Their times, oldest first, when loaded (None: far from the daily cap).
    day: list[datetime] | None = None
    #: First-dispatch times of new conversations over the last day, oldest first.
    new_chats: list[datetime] = field(default_factory=list)
    #: Dispatch times per recipient over the last hour, oldest first.
    by_recipient: dict[str, list[datetime]] = field(default_factory=dict)
    #: Per body digest, the last dispatch time to each recipient over the last hour.
    by_body: dict[str, dict[str, datetime]] = field(default_factory=dict)

    def record(
        self, recipient: str, at: datetime, *, new_chat: bool, body_hash: str | None = None
    ) -> None:
        """Count one dispatch."""
        if body_hash is not None:
            self.by_body.setdefault(body_hash, {})[recipient] = at
        insort(self.recent, at)
        insort(self.by_recipient.setdefault(recipient, []), at)
        self.day_count += 1
        if self.day is not None:
            insort(self.day, at)
        if new_chat:
            insort(self.new_chats, at)

    def day_allowed(self, limit: int, now: datetime) -> datetime:
        """Earliest moment one more send fits under ``limit`` per day."""
        if self.day_count < limit:
            return now
        if self.day is None:
            raise ValueError("day_count reached the daily cap but the day's times were not loaded")
        return earliest_allowed(self.day, limit, DAY, now)

    def distinct_recipients_allowed(self, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment ``recipient`` fits under ``limit`` distinct recipients per hour."""
        start = now - HOUR
        latest = self.by_recipient.get(recipient)
        if latest and latest[-1] > start:
            return now  # already counted in this window: no new distinct recipient
        if len(self.by_recipient) < limit:
            return now  # fewer recipients in all than the cap: none need reading
        lasts = [times[-1] for times in self.by_recipient.values() if times[-1] > start]
        if len(lasts) < limit:
            return now  # room left: no need to order them
        lasts.sort()
        return earliest_allowed(lasts, limit, HOUR, now)
