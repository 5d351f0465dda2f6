"""What one simulated policy did, hour by hour, read from its own store as it runs."""

from __future__ import annotations

import bisect
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from policies.statuses import Action
from scheduler.store.models import WAITING_SQL, DecisionRecord, Message

#: Upper edges (seconds) of the enqueue-to-send histogram: log-spaced from 1 s to 60 days,
#: so a CDF over a month keeps its shape without holding one number a message.
LATENCY_EDGES: tuple[float, ...] = tuple(
    round(10 ** (i / 20), 3) for i in range(0, int(20 * math.log10(60 * 86400)) + 2)
)
_FINAL = (Action.DROP.value, Action.EXPIRE.value, Action.FAIL.value)


@dataclass
class Outcome:
    """Hourly series and totals of one policy's run; everything the report shows."""

    name: str
    start: datetime
    hours: int = 0
    #: Sends (accepted by the provider) per line, one count an hour.
    sends: dict[str, list[int]] = field(default_factory=dict)
    #: Messages waiting at the end of each hour, by the reason they wait.
    waiting: dict[str, list[int]] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    opt_outs: list[int] = field(default_factory=list)
    #: Messages that went to a recipient who opted out later the same (UTC) day.
    sent_before_opt_out: list[int] = field(default_factory=list)
    #: Enqueue-to-send histogram, one count per ``LATENCY_EDGES`` bin (and one past it).
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES) + 1))
    #: The provider model's moves of lines: (hour, line, status).
    line_flags: list[tuple[float, str, str]] = field(default_factory=list)
    #: The provider model's moves of chats to each status, per hour.
    chat_flags: dict[str, list[int]] = field(default_factory=dict)
    totals: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    #: The simulating process's resident memory (MiB) at the end of each hour.
    memory: list[float] = field(default_factory=list)

    def grow(self) -> int:
        """Open the next hour in every series; its index."""
        hour = self.hours
        self.hours += 1
        for series in (
            *self.sends.values(),
            *self.waiting.values(),
            *self.chat_flags.values(),
            self.dropped,
            self.expired,
            self.failed,
            self.opt_outs,
            self.sent_before_opt_out,
        ):
            series.append(0)
        return hour

    def series(self, table: dict[str, list[int]], key: str) -> list[int]:
        if key not in table:
            table[key] = [0] * self.hours
        return table[key]

    def hour_of(self, moment: datetime) -> int:
        return min(max(int((moment - self.start).total_seconds() // 3600), 0), self.hours - 1)

    def percentile(self, share: float) -> float | None:
        """The enqueue-to-send time (seconds, the bin's upper edge) under which ``share``
        of the sent messages went."""
        total = sum(self.latency)
        if not total:
            return None
        running = 0
        for i, count in enumerate(self.latency):
            running += count
            if running >= share * total:
                return LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)]
        return LATENCY_EDGES[-1]

    def summary(self) -> dict[str, Any]:
        sent = sum(sum(v) for v in self.sends.values())
        return {
            "enqueued": self.totals["enqueued"],
            "refused_at_enqueue": self.totals["refused"],
            "sent": sent,
            "dropped": sum(self.dropped),
            "expired": sum(self.expired),
            "failed": sum(self.failed),
            "waiting_at_end": self.totals["waiting_at_end"],
            "opt_outs": sum(self.opt_outs),
            "sent_before_opt_out_same_day": sum(self.sent_before_opt_out),
            "line_flags": sum(1 for f in self.line_flags if f[2] == "FLAGGED"),
            "lines_critical": sum(1 for f in self.line_flags if f[2] == "CRITICAL"),
            "chats_critical": sum(self.chat_flags.get("CRITICAL", [])),
            "latency_p50_s": self.percentile(0.5),
            "latency_p90_s": self.percentile(0.9),
            "latency_p99_s": self.percentile(0.99),
            "decisions": self.totals["decisions"],
            "wall_seconds": round(self.wall_seconds, 2),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start.isoformat(),
            "hours": self.hours,
            "summary": self.summary(),
            "sends_per_line_per_hour": self.sends,
            "waiting_by_reason_per_hour": self.waiting,
            "dropped_per_hour": self.dropped,
            "expired_per_hour": self.expired,
            "failed_per_hour": self.failed,
            "opt_outs_per_hour": self.opt_outs,
            "sent_before_opt_out_per_hour": self.sent_before_opt_out,
            "latency_edges_s": list(LATENCY_EDGES),
            "latency_counts": self.latency,
            "line_flags": [
                {"hour": round(h, 3), "line": line, "status": s} for h, line, s in self.line_flags
            ],
            "chat_flags_per_hour": self.chat_flags,
        }


def resident_mib() -> float:
    """This process's resident memory, in MiB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class SameDay:
    """Sends to each recipient today, so an opt-out can count those that went before it."""

    def __init__(self) -> None:
        self._today: dict[str, tuple[int, int, list[int]]] = {}

    def sent(self, recipient: str, at: datetime, hour: int) -> None:
        day = at.toordinal()
        seen = self._today.get(recipient)
        if seen is None or seen[0] != day:
            self._today[recipient] = (day, 1, [hour])
        else:
            seen[2].append(hour)
            self._today[recipient] = (day, seen[1] + 1, seen[2])

    def opted_out(self, recipient: str, at: datetime) -> list[int]:
        """The hours of today's sends to ``recipient`` (forgotten: one opt-out counts them)."""
        seen = self._today.pop(recipient, None)
        if seen is None or seen[0] != at.toordinal():
            return []
        return seen[2]


def read_hour(session: Session, outcome: Outcome, hour: int, begin: datetime) -> None:
    """Add one hour of the store's decisions, and the waiting messages at its end."""
    end = begin + timedelta(hours=1)
    rows = session.execute(
        select(DecisionRecord.line, DecisionRecord.at, Message.created_at)
        .join(Message, Message.id == DecisionRecord.message_id)
        .where(
            DecisionRecord.at >= begin,
            DecisionRecord.at < end,
            DecisionRecord.action == Action.SENT.value,
        )
    )
    for line, at, created in rows:
        outcome.series(outcome.sends, line or "?")[hour] += 1
        waited = max((at - created).total_seconds(), 0.0)
        outcome.latency[bisect.bisect_left(LATENCY_EDGES, waited)] += 1
    for action, count in session.execute(
        select(DecisionRecord.action, func.count())
        .where(DecisionRecord.at >= begin, DecisionRecord.at < end)
        .group_by(DecisionRecord.action)
    ):
        outcome.totals["decisions"] += count
        if action == Action.DROP.value:
            outcome.dropped[hour] += count
        elif action == Action.EXPIRE.value:
            outcome.expired[hour] += count
        elif action == Action.FAIL.value:
            outcome.failed[hour] += count
    outcome.memory.append(resident_mib())
    waiting = session.execute(
        select(Message.last_code, func.count()).where(text(WAITING_SQL)).group_by(Message.last_code)
    )
    for code, count in waiting:
        outcome.series(outcome.waiting, code or "queued")[hour] = count
