"""In-process limits: for tests and single-process use, never shared across processes."""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy.orm import Session

from policies.pace import Limits, Verdict, check
from policies.usage import LineUsage
from scheduler.limits.base import Limiter, Ticket


class MemoryLimiter(Limiter):
    """Counts sends in this process, with the same pure check the gate uses."""

    def __init__(self) -> None:
        self._usage: dict[str, LineUsage] = {}
        self._counted: set[tuple[str, str]] = set()
        self._mutex = threading.Lock()

    def hit(self, session: Session, ticket: Ticket, limits: Limits, now: datetime) -> Verdict:
        with self._mutex:
            if (ticket.line, ticket.key) in self._counted:
                return Verdict(now, "", 0)
            # Every day is kept so the daily cap can say when it frees up.
            usage = self._usage.setdefault(ticket.line, LineUsage(day=[]))
            verdict = check(usage, limits, ticket.recipient, ticket.new_chat, now)
            if verdict.allowed_at > now:
                return verdict
            usage.record(ticket.recipient, now, new_chat=ticket.new_chat)
            self._counted.add((ticket.line, ticket.key))
            return verdict
