"""A backlog on two lines, held for different reasons: what the status tests read."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from string import ascii_lowercase
from typing import NamedTuple

from scheduler.client import Healthgate

LINE = "+14155550100"
OTHER = "+14155550101"
#: Held on LINE: its chat is CRITICAL.
CRITICAL_RECIPIENT = "+14155550999"
#: Six messages to one recipient on OTHER.
BUSY_RECIPIENT = "+14155550888"
#: What a sender may put in an idempotency key: shown escaped, never as markup or HTML.
HOSTILE_KEY = "<script>alert(1)</script>[/x][bold]"


class World(NamedTuple):
    critical_id: str
    line_ids: list[str]
    other_ids: list[str]


def body(i: int) -> str:
    """Bodies that differ in letters, not digits, so no two are near-identical."""
    return "hello " + ascii_lowercase[i // 26] + ascii_lowercase[i % 26]


def build(hg: Healthgate, now: datetime, later: Callable[[], object] = lambda: None) -> World:
    """A message to a CRITICAL chat on LINE (its oldest; ``later`` moves the clock on);
    then 25 new recipients on LINE (20 go, 5 wait for ``sends_per_minute``) and, on OTHER made
    AT_RISK (caps halved), 6 messages to one recipient (2 go, 4 wait for
    ``sends_per_recipient_per_minute``); then one drain at ``now``."""
    hg.set_chat_health(LINE, CRITICAL_RECIPIENT, "CRITICAL")
    critical_id = hg.enqueue(
        to=CRITICAL_RECIPIENT, body="held", line=LINE, idempotency_key=HOSTILE_KEY
    )
    later()
    hg.set_line_health(OTHER, "AT_RISK")
    line_ids = hg.enqueue_many(
        [{"to": f"+1415555{1000 + i}", "body": body(i), "line": LINE} for i in range(25)]
    )
    other_ids = hg.enqueue_many(
        [{"to": BUSY_RECIPIENT, "body": body(i), "line": OTHER} for i in range(6)]
    )
    hg.drain(now=now)
    return World(critical_id, line_ids, other_ids)
