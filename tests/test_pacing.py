"""Recovery ramp and content variation through the store, with the clock frozen."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import select

from policies.content import body_digest
from scheduler.client import Healthgate
from scheduler.store.models import Chat, Message
from tests.conftest import LINE_A, POLICY, START

Sends = Callable[[], list[dict[str, str]]]
BOB = "+14155550123"


def recipient(n: int) -> str:
    return f"+1415555{n:04d}"


def last(hg: Healthgate, message_id: str) -> dict[str, str]:
    decision: dict[str, str] = hg.explain(message_id)["decisions"][-1]
    return decision


def states(hg: Healthgate, ids: list[str]) -> list[str]:
    return [str(hg.explain(i)["state"]) for i in ids]


RAMPED = POLICY + "\n[caps]\nsends_per_minute = 4\n[line]\nrecovery_ramp_hours = 24\n"


@pytest.mark.parametrize(
    ("bad", "good"), [("AT_RISK", "HEALTHY"), ("CRITICAL", "HEALTHY"), ("FLAGGED", "ACTIVE")]
)
def test_line_back_to_healthy_records_when_it_recovered(
    hg: Healthgate, clock: FrozenDateTimeFactory, bad: str, good: str
) -> None:
    # Given a line AT_RISK, CRITICAL or FLAGGED
    hg.set_line_health(LINE_A, bad)
    clock.tick(timedelta(minutes=5))

    # When it can send normally again
    hg.set_line_health(LINE_A, good)

    # Then its recovery time is now, and status shows it
    line = next(x for x in hg.status()["lines"] if x["number"] == LINE_A)
    assert line["recovered_at"] == (START + timedelta(minutes=5)).isoformat()


def test_line_that_never_left_healthy_has_no_recovery(hg: Healthgate) -> None:
    # Given a HEALTHY line, When it is set HEALTHY again
    hg.set_line_health(LINE_A, "HEALTHY")

    # Then no recovery is recorded: it runs at full pace
    line = next(x for x in hg.status()["lines"] if x["number"] == LINE_A)
    assert line["recovered_at"] is None


@pytest.mark.parametrize("policy_text", [RAMPED])
def test_recovered_line_releases_its_backlog_at_the_ramped_pace(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a CRITICAL line with six held messages to six recipients
    hg.set_line_health(LINE_A, "CRITICAL")
    ids = [hg.enqueue(to=recipient(i), body=f"note {i}", line=LINE_A) for i in range(6)]
    hg.drain()

    # When the line returns to HEALTHY, a second later
    clock.tick(1)
    hg.set_line_health(LINE_A, "HEALTHY")
    hg.drain()

    # Then half its pace goes now (the ramp starts at the AT_RISK factor), not the backlog
    assert states(hg, ids) == ["sent"] * 2 + ["throttled"] * 4
    assert last(hg, ids[2])["code"] == "cap_sends_per_minute"
    assert "recovery ramp at 50%" in last(hg, ids[2])["reason"]
    assert len(sends()) == 2


@pytest.mark.parametrize("policy_text", [RAMPED])
def test_recovered_line_runs_at_full_pace_after_the_ramp(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a line that recovered a day ago, with a backlog
    hg.set_line_health(LINE_A, "AT_RISK")
    clock.tick(1)
    hg.set_line_health(LINE_A, "HEALTHY")
    clock.tick(timedelta(hours=24))
    ids = [hg.enqueue(to=recipient(i), body=f"note {i}", line=LINE_A) for i in range(6)]

    # When it dispatches
    hg.drain()

    # Then its full cap of 4 a minute goes
    assert states(hg, ids) == ["sent"] * 4 + ["throttled"] * 2


def test_enqueue_stores_the_digest_of_the_normalised_body(hg: Healthgate) -> None:
    message_id = hg.enqueue(to=BOB, body="Your code is 1234", line=LINE_A)

    with hg.runtime.sessions() as session:
        stored = session.get_one(Message, message_id).body_hash

    assert stored == body_digest("your code is 98")


REPEATS = POLICY + "\n[chat]\nat_risk_max_unanswered = 5\n"


@pytest.mark.parametrize("policy_text", [REPEATS])
def test_near_identical_body_to_an_at_risk_chat_is_held(hg: Healthgate, sends: Sends) -> None:
    # Given an AT_RISK chat that got "Your code is 1234"
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.enqueue(to=BOB, body="Your code is 1234", line=LINE_A)
    hg.drain()

    # When a near-identical body and a different one follow
    repeat = hg.enqueue(to=BOB, body="your code is 5678", line=LINE_A)
    other = hg.enqueue(to=BOB, body="Are you still interested?", line=LINE_A)
    hg.drain()

    # Then the repeat is held for the window, the different body goes
    assert states(hg, [repeat, other]) == ["throttled", "sent"]
    assert last(hg, repeat)["code"] == "content_repeated"
    assert last(hg, repeat)["not_before"] == (START + timedelta(hours=24)).isoformat()


@pytest.mark.parametrize("policy_text", [REPEATS])
def test_a_reply_releases_a_held_repeat(hg: Healthgate, sends: Sends) -> None:
    # Given a repeat held for an AT_RISK chat
    hg.set_chat_health(LINE_A, BOB, "AT_RISK")
    hg.enqueue(to=BOB, body="Your code is 1234", line=LINE_A)
    hg.drain()
    repeat = hg.enqueue(to=BOB, body="Your code is 1234", line=LINE_A)
    hg.drain()

    # When Bob replies
    hg.record_inbound(LINE_A, BOB, "thanks")
    hg.drain()

    # Then the repeat goes
    assert states(hg, [repeat]) == ["sent"]


SPREAD = POLICY + "\n[content]\nsame_body_max_recipients_per_hour = 2\n"


@pytest.mark.parametrize("policy_text", [SPREAD])
def test_same_body_to_many_recipients_is_held(hg: Healthgate, sends: Sends) -> None:
    # Given a line allowed to send one body to 2 recipients an hour
    # When it has near-identical bodies for three recipients
    ids = [
        hg.enqueue(to=recipient(i), body=f"Sale: {10 + i}% off today", line=LINE_A)
        for i in range(3)
    ]
    hg.drain()

    # Then the third waits until the first leaves the hour, with the rule named
    assert states(hg, ids) == ["sent", "sent", "throttled"]
    assert last(hg, ids[2])["code"] == "content_same_body"
    assert last(hg, ids[2])["not_before"] == (START + timedelta(hours=1)).isoformat()


def test_chat_back_to_healthy_releases_its_backlog_under_the_caps(
    hg: Healthgate, sends: Sends, clock: FrozenDateTimeFactory
) -> None:
    # Given a CRITICAL chat with seven held messages (default: 5 a minute per recipient)
    hg.set_chat_health(LINE_A, BOB, "CRITICAL")
    ids = [hg.enqueue(to=BOB, body=f"update {chr(97 + i)}", line=LINE_A) for i in range(7)]
    hg.drain()

    # When the chat returns to HEALTHY, a second later
    clock.tick(1)
    hg.set_chat_health(LINE_A, BOB, "HEALTHY")
    hg.drain()

    # Then five go now and two wait for the minute, and the recovery is recorded
    assert states(hg, ids) == ["sent"] * 5 + ["throttled"] * 2
    assert last(hg, ids[5])["code"] == "cap_sends_per_recipient_per_minute"
    with hg.runtime.sessions() as session:
        chat = session.scalars(select(Chat).where(Chat.recipient == BOB)).one()
        assert chat.recovered_at == START + timedelta(seconds=1)
