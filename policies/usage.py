"""Sliding-window counters of what a line has sent, as the gate reads them."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _inside(times: Sequence[datetime], window: timedelta, now: datetime, unloaded: int) -> int:
    """Events inside ``window`` at ``now``: those of ``times`` (oldest first), and
    ``unloaded`` more whose times are not given."""
    return unloaded + len(times) - bisect_right(times, now - window)


class TimesNotLoaded(ValueError):
    """A window reached its cap but only its count was loaded, not its times."""


def earliest_allowed(
    times: Sequence[datetime],
    limit: int,
    window: timedelta,
    now: datetime,
    unloaded: int = 0,
) -> datetime:
    """The earliest moment one more event fits under ``limit`` per sliding ``window``.

    ``times`` is sorted oldest first. ``unloaded`` more events are inside the window at
    ``now`` with times not given (a loader reads only counts far from a cap). When the
    window already holds ``limit`` events, the next one fits once the oldest of the
    last ``limit`` has left the window.
    """
    inside = _inside(times, window, now, unloaded)
    if inside < limit:
        return now
    if unloaded:
        raise TimesNotLoaded(
            f"{inside} events in the window reach the cap of {limit} but {unloaded} of "
            "their times were not loaded"
        )
    return times[len(times) - limit] + window


@dataclass(slots=True)
class LineUsage:
    """Dispatches of one line, kept by the caller and read by the gate.

    The scheduler loads it from the store and records each SEND as a batch progresses,
    so messages decided together still see each other. A window far from its cap is
    loaded as a count only (the ``*_unloaded`` fields: events inside the window at the
    batch's moment whose times were not read), and per recipient only for the
    recipients the batch sends to; the times are read once the count comes near the
    cap, since they are needed only to say when the cap frees up. So what a batch reads
    grows with the batch, not with the line's traffic. A usage built empty (or by
    ``record`` alone) is complete.
    """

    #: Dispatch times over the last minute, oldest first.
    recent: list[datetime] = field(default_factory=list)
    #: Dispatches over the last minute not in ``recent``.
    recent_unloaded: int = 0
    #: Dispatches over the last day.
    day_count: int = 0
    #: Their times, oldest first, when loaded (None: far from the daily cap).
    day: list[datetime] | None = None
    #: First-dispatch times of new conversations over the last day, oldest first.
    new_chats: list[datetime] = field(default_factory=list)
    #: New conversations over the last day not in ``new_chats``.
    new_chats_unloaded: int = 0
    #: Dispatch times per recipient over the last hour, oldest first (the last minute's
    #: in full, an earlier one as the recipient's last send of the hour).
    by_recipient: dict[str, list[datetime]] = field(default_factory=dict)
    #: Distinct recipients over the last hour not in ``by_recipient``.
    recipients_unloaded: int = 0
    #: Dispatch times per recipient over the last day, oldest first (a loader reads them
    #: for the batch's recipients near the per-recipient daily cap).
    recipient_day: dict[str, list[datetime]] = field(default_factory=dict)
    #: Per recipient, dispatches over the last day not in ``recipient_day``.
    recipient_day_unloaded: dict[str, int] = field(default_factory=dict)
    #: Per body digest, the last dispatch time to each recipient over the last hour.
    by_body: dict[str, dict[str, datetime]] = field(default_factory=dict)
    #: Per body digest, distinct recipients over the last hour not in ``by_body`` (far
    #: from the cap, at most that many: a loader may bound it by the line's recipients).
    bodies_unloaded: dict[str, int] = field(default_factory=dict)

    def record(
        self, recipient: str, at: datetime, *, new_chat: bool, body_hash: str | None = None
    ) -> None:
        """Count one dispatch."""
        if body_hash is not None:
            self.by_body.setdefault(body_hash, {})[recipient] = at
        insort(self.recent, at)
        insort(self.by_recipient.setdefault(recipient, []), at)
        insort(self.recipient_day.setdefault(recipient, []), at)
        self.day_count += 1
        if self.day is not None:
            insort(self.day, at)
        if new_chat:
            insort(self.new_chats, at)

    def minute_allowed(self, limit: int, now: datetime) -> datetime:
        """Earliest moment one more send fits under ``limit`` per minute."""
        return earliest_allowed(self.recent, limit, MINUTE, now, self.recent_unloaded)

    def sent_last_minute(self, now: datetime) -> int:
        return _inside(self.recent, MINUTE, now, self.recent_unloaded)

    def new_chats_allowed(self, limit: int, now: datetime) -> datetime:
        """Earliest moment one more new conversation fits under ``limit`` per day."""
        return earliest_allowed(self.new_chats, limit, DAY, now, self.new_chats_unloaded)

    def new_chats_last_day(self, now: datetime) -> int:
        return _inside(self.new_chats, DAY, now, self.new_chats_unloaded)

    def day_allowed(self, limit: int, now: datetime) -> datetime:
        """Earliest moment one more send fits under ``limit`` per day."""
        if self.day_count < limit:
            return now
        if self.day is None:
            raise TimesNotLoaded(
                "day_count reached the daily cap but the day's times were not loaded"
            )
        return earliest_allowed(self.day, limit, DAY, now)

    def recipient_minute_allowed(self, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment one more send to ``recipient`` fits under ``limit`` per minute."""
        return earliest_allowed(self.by_recipient.get(recipient, []), limit, MINUTE, now)

    def recipient_day_allowed(self, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment one more send to ``recipient`` fits under ``limit`` per day."""
        return earliest_allowed(
            self.recipient_day.get(recipient, []),
            limit,
            DAY,
            now,
            self.recipient_day_unloaded.get(recipient, 0),
        )

    def sent_to_last_day(self, recipient: str, now: datetime) -> int:
        """Dispatches to ``recipient`` over the last day."""
        return _inside(
            self.recipient_day.get(recipient, []),
            DAY,
            now,
            self.recipient_day_unloaded.get(recipient, 0),
        )

    def recipients_last_hour(self, now: datetime) -> int:
        """Distinct recipients over the last hour."""
        start = now - HOUR
        loaded = sum(1 for times in self.by_recipient.values() if times and times[-1] > start)
        return self.recipients_unloaded + loaded

    def distinct_recipients_allowed(self, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment ``recipient`` fits under ``limit`` distinct recipients per hour."""
        start = now - HOUR
        latest = self.by_recipient.get(recipient)
        if latest and latest[-1] > start:
            return now  # already counted in this window: no new distinct recipient
        if len(self.by_recipient) + self.recipients_unloaded < limit:
            return now  # fewer recipients in all than the cap: none need reading
        lasts = [times[-1] for times in self.by_recipient.values() if times[-1] > start]
        return _earliest_of_lasts(lasts, limit, now, self.recipients_unloaded)

    def body_allowed(self, body_hash: str, recipient: str, limit: int, now: datetime) -> datetime:
        """Earliest moment ``body_hash`` may reach ``recipient`` under ``limit`` distinct
        recipients of one body per hour (a recipient it already reached is no spread)."""
        start = now - HOUR
        recipients = self.by_body.get(body_hash, {})
        if recipients.get(recipient, start) > start:
            return now  # this recipient is already counted: a repeat is not a new spread
        unloaded = self.bodies_unloaded.get(body_hash, 0)
        if len(recipients) + unloaded < limit:
            return now  # fewer recipients in all than the cap: none need reading
        lasts = [at for at in recipients.values() if at > start]
        return _earliest_of_lasts(lasts, limit, now, unloaded)


def _earliest_of_lasts(lasts: list[datetime], limit: int, now: datetime, unloaded: int) -> datetime:
    """:func:`earliest_allowed` over an hour of last-send times, sorted only when needed."""
    if len(lasts) + unloaded < limit:
        return now  # room left: no need to order them
    lasts.sort()
    return earliest_allowed(lasts, limit, HOUR, now, unloaded)
