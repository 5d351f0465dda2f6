"""Held messages cost nothing while they wait: a backlog to one recipient is looked at
again when each message may go, not all of it every time one may."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import event, func, select

from scheduler.client import Healthgate
from scheduler.store.models import DecisionRecord, Message
from tests.conftest import LINE_A, POLICY, START

Sends = Callable[[], list[dict[str, str]]]
BOB = "+14155550123"
BACKLOG = 1_500
TICK = timedelta(seconds=10)


@contextmanager
def statements(hg: Healthgate) -> Iterator[list[str]]:
    """Every SQL statement the client's engine runs inside the block."""
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append(statement)

    engine = hg.runtime.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_throttled_backlog_to_one_recipient_is_looked_at_once_a_turn(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    hg.enqueue_many(
        {"to": BOB, "body": f"update {i}", "line": LINE_A, "idempotency_key": f"k{i}"}
        for i in range(BACKLOG)
    )

    with statements(hg) as seen:
        for _ in range(360):  # an hour of ticks
            hg.drain()
            clock.tick(TICK)

    with hg.runtime.sessions() as session:
        stored = session.scalar(select(func.count()).select_from(DecisionRecord)) or 0
        repeats = session.scalar(select(func.sum(DecisionRecord.repeats))) or 0
        waiting = session.scalar(
            select(func.count()).select_from(Message).where(Message.state == "throttled")
        )
    sent = len(sends())
    assert sent > 0
    assert sent + waiting == BACKLOG
    # One throttle when the backlog is first looked at, and a send and its answer each
    # (with room for a few looked at again when another took their turn); never the
    # backlog once a turn.
    assert stored + repeats <= BACKLOG + 3 * sent + 50
    # Statements follow the sends, not the backlog times the ticks.
    assert len(seen) <= 20 * (360 + sent)


@pytest.mark.parametrize(
    "policy_text",
    [POLICY + "\n[content]\nsame_body_max_recipients_per_hour = 2\n"],
    indirect=False,
)
def test_a_hold_taken_again_is_counted_on_its_record_not_stored_again(
    hg: Healthgate, clock: FrozenDateTimeFactory
) -> None:
    ids = [hg.enqueue(to=f"+1415555020{i}", body="Sale today", line=LINE_A) for i in range(5)]
    hg.drain()
    clock.tick(timedelta(hours=1))
    hg.drain()  # two more go; the last is held again, for the same reason

    waiting = [i for i in ids if hg.explain(i)["state"] == "throttled"]
    assert len(waiting) == 1
    decisions = hg.explain(waiting[0])["decisions"]
    holds = [d for d in decisions if d["action"] == "THROTTLE"]
    assert len(holds) == 1
    assert holds[0]["code"] == "content_same_body"
    assert holds[0]["at"] == START.isoformat()
    assert holds[0]["repeats"] == 1
    assert holds[0]["last_at"] == (START + timedelta(hours=1)).isoformat()
    assert holds[0]["not_before"] == (START + timedelta(hours=2)).isoformat()
