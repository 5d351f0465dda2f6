"""Priority through the store: transactional messages before marketing on a capped line,
recipients in turn within a priority, and sending windows on the way."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import event, select

from scheduler.client import Healthgate
from scheduler.dispatch.gating import in_turn
from scheduler.settings import Settings
from scheduler.store.models import Message
from tests.conftest import LINE_A, POLICY

Sends = Callable[[], list[dict[str, str]]]
#: 10:00 in Los Angeles, where the test numbers (+1 415) are: inside marketing's window.
MORNING = datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
#: A line capped at 20 sends a minute and nothing else: only the pace binds.
CAPPED = (
    POLICY
    + """
[caps]
sends_per_minute = 20
new_conversations_per_day = 100000
distinct_recipients_per_hour = 100000
sends_per_day = 1000000

[content]
same_body_max_recipients_per_hour = 100000
"""
)
MARKETING = 5000
TRANSACTIONAL = 10


def recipient(n: int) -> str:
    return f"+1415{2_000_000 + n:07d}"


@pytest.fixture
def policy_text() -> str:
    return CAPPED


@pytest.fixture
def morning() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(MORNING) as frozen:
        yield frozen


@pytest.fixture
def hg(settings: Settings, morning: FrozenDateTimeFactory) -> Iterator[Healthgate]:
    client = Healthgate(settings)
    client.sync_lines()
    yield client
    client.close()


def enqueue_campaign(hg: Healthgate, count: int) -> list[str]:
    return hg.enqueue_many(
        [
            {"to": recipient(n), "body": "20% off today", "line": LINE_A, "category": "marketing"}
            for n in range(count)
        ]
    )


def enqueue_codes(hg: Healthgate, count: int) -> list[str]:
    return hg.enqueue_many(
        [
            {"to": recipient(1_000_000 + n), "body": f"Your code is {n:06d}", "line": LINE_A}
            for n in range(count)
        ]
    )


def categories(hg: Healthgate) -> dict[str, str]:
    with hg.runtime.sessions() as session:
        return {
            row.id: row.category for row in session.execute(select(Message.id, Message.category))
        }


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_transactional_messages_due_with_a_campaign_go_first_in_the_first_cap_window(
    hg: Healthgate, sends: Sends
) -> None:
    # Given 5,000 marketing messages, then 10 transactional ones, due on one line that
    # takes 20 sends a minute
    campaign = enqueue_campaign(hg, MARKETING)
    codes = enqueue_codes(hg, TRANSACTIONAL)

    # When the line's first minute is dispatched
    hg.drain()

    # Then every transactional message went in that minute, before any marketing one,
    # and the campaign took no more than its share: four fifths of the 20
    sent = [s["message_id"] for s in sends()]
    assert sent[:TRANSACTIONAL] == codes
    assert set(sent[TRANSACTIONAL:]) <= set(campaign)
    assert len(sent) == 16
    # And the campaign waits its turn at the line's pace, not dropped
    states = hg.status()["waiting"]["by_state"]
    assert states == {"throttled": MARKETING - 6}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_passcode_goes_at_once_while_a_campaign_fills_the_line(
    hg: Healthgate, sends: Sends, morning: FrozenDateTimeFactory
) -> None:
    # Given a campaign sending as fast as the line lets marketing (16 of 20 a minute)
    enqueue_campaign(hg, MARKETING)
    hg.drain()
    assert len(sends()) == 16
    morning.tick(timedelta(seconds=10))

    # When a passcode comes in the same minute
    [code] = enqueue_codes(hg, 1)
    hg.drain()

    # Then it goes at once, in the room the campaign had to leave
    assert sends()[-1]["message_id"] == code
    assert hg.explain(code)["state"] == "sent"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_transactional_messages_never_wait_behind_a_queued_campaign(
    hg: Healthgate, sends: Sends, morning: FrozenDateTimeFactory
) -> None:
    # Given a campaign already queued on the line at its pace (hours of backlog)
    enqueue_campaign(hg, MARKETING)
    hg.drain()
    morning.tick(timedelta(seconds=10))

    # When 10 transactional messages come while the line's minute is full
    codes = enqueue_codes(hg, TRANSACTIONAL)
    kinds = categories(hg)
    sent_before = len(sends())
    for _ in range(60):  # three minutes, a drain every 3 seconds
        hg.drain()
        with hg.runtime.sessions() as session:
            # Then no marketing message goes out while a transactional one is due
            waiting = session.scalar(
                select(Message.id).where(
                    Message.id.in_(codes),
                    Message.state != "sent",
                    Message.not_before <= datetime.now(UTC),
                )
            )
        assert waiting is None, f"{waiting} was due and not sent at {datetime.now(UTC)}"
        morning.tick(timedelta(seconds=3))

    # And every one of them went as soon as the line had room, at its pace: none was
    # left behind the campaign's hours of backlog
    sent_at = {s["message_id"]: datetime.fromisoformat(s["at"]) for s in sends()[sent_before:]}
    assert set(codes) <= set(sent_at)
    assert max(sent_at[c] for c in codes) <= MORNING + timedelta(seconds=60 + 3 * TRANSACTIONAL)
    assert {kinds[m] for m in sent_at} == {"marketing", "transactional"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_within_a_priority_recipients_take_turns(hg: Healthgate) -> None:
    # Given one recipient with five messages, then two others with one each
    many = [hg.enqueue(recipient(1), f"part {n}", LINE_A) for n in range(5)]
    bob = hg.enqueue(recipient(2), "hello", LINE_A)
    carol = hg.enqueue(recipient(3), "hi", LINE_A)
    code = hg.enqueue(recipient(4), "code", LINE_A, category="transactional")
    promo = hg.enqueue(recipient(5), "promo", LINE_A, category="marketing")
    with hg.runtime.sessions() as session:
        messages = list(session.scalars(select(Message)))

    # When a batch is put in the order it is decided in
    order = [m.id for m in in_turn(messages)]

    # Then each recipient's first message comes before anyone's second, in the order
    # they came, and marketing after every transactional message
    assert order == [many[0], bob, carol, code, many[1], many[2], many[3], many[4], promo]


#: The pace alone binds, and marketing held overnight is let out over half an hour.
SPREAD = CAPPED + "\n[categories.marketing]\nrelease_spread_minutes = 30\n"
#: 08:00 UTC: midnight in Los Angeles. 16:00 UTC: 08:00 there, marketing's window opens.
MIDNIGHT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
OPENING = datetime(2026, 11, 22, 16, 0, tzinfo=UTC)
BACKLOG = 400


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("policy_text", [SPREAD])
def test_a_night_backlog_is_let_out_spread_under_the_caps_and_the_recovery_ramp(
    hg: Healthgate, sends: Sends, morning: FrozenDateTimeFactory
) -> None:
    # Given a line that came back to HEALTHY at midnight (its caps ramp up from half),
    # and a campaign of 400 held overnight for Los Angeles' morning
    morning.move_to(MIDNIGHT)
    hg.set_line_health(LINE_A, "AT_RISK")
    hg.set_line_health(LINE_A, "HEALTHY")
    enqueue_campaign(hg, BACKLOG)
    hg.drain()
    assert hg.status()["waiting"]["by_reason"] == {"quiet_hours": BACKLOG}

    # When the worker ticks every 10 seconds from the opening on, for an hour
    for tick in range(360):
        morning.move_to(OPENING + timedelta(seconds=10 * tick))
        hg.drain()

    # Then nothing went before 08:00 and all of it went in the hour
    times = sorted(datetime.fromisoformat(s["at"]) for s in sends())
    assert len(times) == BACKLOG
    assert times[0] >= OPENING
    # And no minute took more than marketing's share of the ramped cap: 20 a minute at
    # two thirds (8 h into the ramp) is 13, of which marketing may use four fifths
    ramped = 10
    in_a_minute = [sum(1 for t in times if s <= t < s + timedelta(minutes=1)) for s in times]
    assert max(in_a_minute) <= ramped
    # And the release is spread, not a burst at 08:00: no tick sends half a minute's
    # room at once (unspread, the first tick sends 8)
    per_tick = Counter(times)
    assert max(per_tick.values()) < ramped / 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_claim_reads_its_index_in_priority_order_without_sorting(hg: Healthgate) -> None:
    # Given the statement a claim runs (captured while draining one message)
    enqueue_codes(hg, 1)
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "SKIP LOCKED" in statement and "priority DESC" in statement:
            captured.append((statement, params))

    event.listen(hg.runtime.engine, "before_cursor_execute", capture)
    hg.drain()
    event.remove(hg.runtime.engine, "before_cursor_execute", capture)
    statement, params = captured[0]

    # When PostgreSQL plans it, reading the table whole being the costlier way
    with hg.runtime.engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, params)
        )

    # Then the due messages are read from the claim's index in its order, never sorted
    assert "ix_messages_waiting_priority_due" in plan, plan
    assert "Sort" not in plan, plan
