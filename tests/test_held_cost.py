"""Held messages cost nothing while they wait: a backlog to one recipient is looked at
again when each message may go, not all of it every time one may."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import event, func, select

from policies.codes import CAP_CODES
from policies.decision import Queue
from policies.pace import cap_pace
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


#: The per-minute cap alone binds within the hour (the daily one would stop at 20).
MINUTE_ONLY = POLICY + "\n[caps]\nsends_per_recipient_per_day = 2000\n"


@pytest.mark.parametrize("policy_text", [MINUTE_ONLY, POLICY], ids=["minute", "defaults"])
def test_a_throttled_backlog_to_one_recipient_is_looked_at_once_a_turn(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory, policy_text: str
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
    if policy_text == MINUTE_ONLY:
        assert sent == 300  # 5 at once, then one every 12 s
        assert stored + repeats <= BACKLOG + 2 * sent + 50
    else:
        # Held on the minute's cap, then on the day's: once a rule, never once a tick.
        assert sent == 20
        assert stored + repeats <= 2 * BACKLOG + 2 * sent
    with hg.runtime.sessions() as session:
        holds = session.execute(
            select(func.count())
            .select_from(DecisionRecord)
            .where(DecisionRecord.action == "THROTTLE")
            .group_by(DecisionRecord.message_id, DecisionRecord.code)
        ).scalars()
        assert max(holds) == 1
    # Statements follow the ticks and the turns, not the backlog times the ticks (35,120
    # statements for the minute's case when every tick looked at the whole backlog).
    assert len(seen) <= 40 * 360


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


def test_every_cap_has_a_pace_and_a_queue() -> None:
    for cap in CAP_CODES:
        pace = cap_pace(cap, 4)
        window = pace.interval * 4
        assert window in (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))
        assert pace.queue is (Queue.CHAT if "per_recipient" in cap else Queue.LINE)
