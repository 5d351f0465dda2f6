"""The simulation's limiter: the memory limiter's pure check, with windows it forgets.

It answers ``hit`` with ``policies.pace.check``, as the memory and Redis limiters do, and
keeps each line's windows in memory, so a batch reads them from here (as it reads them
from Redis in production) instead of counting the store. What falls out of the longest
window (a day) is forgotten every simulated hour: a month of sends does not pile up.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict, check
from policies.usage import DAY, HOUR, MINUTE, LineUsage
from scheduler.limits.base import Limiter, Ticket

#: The longest window a cap counts over.

#: How often what fell out of every window is forgotten.
FORGET_EVERY = timedelta(hours=1)


class _Hit(NamedTuple):
    at: datetime
    recipient: str
    new_chat: bool
    key: str


class SimulatedLimiter(Limiter):
    """Counts sends in this process; gives the batch a copy of each line's windows."""

    def __init__(self) -> None:
        self._usage: dict[str, LineUsage] = {}
        self._hits: dict[str, deque[_Hit]] = {}
        self._counted: set[str] = set()
        self._forgot: datetime | None = None

    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        self._forget(now)
        key = f"{ticket.line}:{ticket.key}"
        if key in self._counted:
            return Verdict(now, "", 0)
        usage = self._usage.setdefault(ticket.line, LineUsage(day=[]))
        verdict = check(usage, limits, ticket.recipient, ticket.new_chat, now)
        if verdict.allowed_at > now:
            return verdict
        usage.record(ticket.recipient, now, new_chat=ticket.new_chat)
        self._hits.setdefault(ticket.line, deque()).append(
            _Hit(now, ticket.recipient, ticket.new_chat, key)
        )
        self._counted.add(key)
        return verdict

    def windows(
        self,
        lines: Mapping[int, str],
        limits: Mapping[int, Limits],
        now: datetime,
        headroom: int,
        recipients: Mapping[int, Collection[str]],
        single: Collection[str] = (),
    ) -> dict[int, LineUsage]:
        """A copy of each line's windows (the batch adds its own sends to it); every
        recipient's, ``single`` or not: in memory they cost nothing to read."""
        self._forget(now)
        return {
            line_id: _copy(self._usage.get(number), recipients.get(line_id, ()), now)
            for line_id, number in lines.items()
        }

    def _forget(self, now: datetime) -> None:
        """Rebuild each line's usage from its last day of sends, once an hour."""
        if self._forgot is not None and now - self._forgot < FORGET_EVERY:
            return
        self._forgot = now
        for line, hits in self._hits.items():
            while hits and hits[0].at <= now - DAY:
                self._counted.discard(hits.popleft().key)
            usage = self._usage[line] = LineUsage(day=[])
            for hit in hits:
                usage.record(hit.recipient, hit.at, new_chat=hit.new_chat)


def _copy(usage: LineUsage | None, recipients: Collection[str], now: datetime) -> LineUsage:
    """What the batch needs of ``usage`` at ``now``: each window's times inside it (the
    lists are in time order), and the day per recipient for the batch's recipients."""
    if usage is None:
        return LineUsage(day=[])
    day = _since(usage.day or [], now - DAY)
    hour = now - HOUR
    return LineUsage(
        recent=_since(usage.recent, now - MINUTE),
        day_count=len(day),
        day=day,
        new_chats=_since(usage.new_chats, now - DAY),
        by_recipient={r: list(t) for r, t in usage.by_recipient.items() if t and t[-1] > hour},
        recipient_day={
            r: _since(usage.recipient_day[r], now - DAY)
            for r in recipients
            if r in usage.recipient_day
        },
    )


def _since(times: list[datetime], start: datetime) -> list[datetime]:
    """The times after ``start`` (the windows count from just after their start)."""
    return times[bisect_right(times, start) :]
