"""The router: sticky chats, new recipients to the best line, rerouting, caps that bind."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from scheduler.client import Healthgate
from tests.conftest import LINE_A, LINE_B, POLICY

Sends = Callable[[], list[dict[str, str]]]
BOB = "+14155550123"
CAROL = "+14155550124"
NEW = "+14155550199"


def recipient(n: int) -> str:
    return f"+1415555{n:04d}"


def decisions(hg: Healthgate, message_id: str) -> list[tuple[str, str]]:
    return [(d["action"], d["code"]) for d in hg.explain(message_id)["decisions"]]


def set_line(hg: Healthgate, line: str, status: str) -> None:
    if status != "HEALTHY":
        hg.set_line_health(line, status)


ALLOW_AT_RISK = POLICY + "\n[line]\nat_risk_takes_new_recipients = true\n"


@pytest.mark.parametrize(
    ("policy_text", "a", "b", "line", "state", "code"),
    [
        (POLICY, "HEALTHY", "HEALTHY", LINE_A, "sent", "sent"),
        (POLICY, "AT_RISK", "HEALTHY", LINE_B, "sent", "sent"),
        (POLICY, "CRITICAL", "HEALTHY", LINE_B, "sent", "sent"),
        (POLICY, "FLAGGED", "HEALTHY", LINE_B, "sent", "sent"),
        (POLICY, "HEALTHY", "CRITICAL", LINE_A, "sent", "sent"),
        (POLICY, "AT_RISK", "AT_RISK", None, "deferred", "no_line"),
        (POLICY, "CRITICAL", "FLAGGED", None, "deferred", "no_line"),
        (ALLOW_AT_RISK, "AT_RISK", "HEALTHY", LINE_B, "sent", "sent"),
        (ALLOW_AT_RISK, "AT_RISK", "CRITICAL", LINE_A, "sent", "sent"),
        (ALLOW_AT_RISK, "CRITICAL", "FLAGGED", None, "deferred", "no_line"),
    ],
)
def test_new_recipient_goes_to_the_healthiest_line(
    hg: Healthgate, a: str, b: str, line: str | None, state: str, code: str
) -> None:
    # Given two lines in these states
    set_line(hg, LINE_A, a)
    set_line(hg, LINE_B, b)

    # When a message to a new recipient is enqueued without a line and dispatched
    message_id = hg.enqueue(to=NEW, body="hello")
    hg.drain()

    # Then it went out on the expected line, or waits (not dropped) for one
    explained = hg.explain(message_id)
    assert (explained["line"], explained["state"], explained["decisions"][-1]["code"]) == (
        line,
        state,
        code,
    )


@pytest.mark.parametrize(
    ("a", "b"), [("AT_RISK", "HEALTHY"), ("CRITICAL", "HEALTHY"), ("FLAGGED", "HEALTHY")]
)
def test_existing_chat_stays_on_its_line(hg: Healthgate, a: str, b: str) -> None:
    # Given Bob's conversation on line A, which then turns bad
    hg.enqueue(to=BOB, body="first", line=LINE_A)
    hg.drain()
    set_line(hg, LINE_A, a)
    set_line(hg, LINE_B, b)

    # When another message to Bob is enqueued without a line
    message_id = hg.enqueue(to=BOB, body="second")
    hg.drain()

    # Then it stays on line A (sent paced, or held), never moved to B
    explained = hg.explain(message_id)
    assert explained["line"] == LINE_A
    assert all(d["line"] in (LINE_A, None) for d in explained["decisions"])


CAPPED_A = POLICY.replace(
    'number = "+14155550100"\nprovider = "log"\n',
    'number = "+14155550100"\nprovider = "log"\ncaps = { new_conversations_per_day = 1 }\n',
)


@pytest.mark.parametrize("policy_text", [CAPPED_A])
def test_line_at_its_new_conversations_cap_takes_no_new_recipient(hg: Healthgate) -> None:
    # Given line A used its one new conversation of the day
    hg.enqueue(to=BOB, body="hello", line=LINE_A)
    hg.drain()

    # When a new recipient is enqueued without a line
    message_id = hg.enqueue(to=NEW, body="hello")
    hg.drain()

    # Then it goes to line B, which has room
    assert (hg.explain(message_id)["line"], hg.explain(message_id)["state"]) == (LINE_B, "sent")


@pytest.mark.parametrize("policy_text", [CAPPED_A])
def test_new_recipient_over_a_cap_at_dispatch_moves_to_a_line_with_room(hg: Healthgate) -> None:
    # Given two new recipients routed to line A by two calls (each fits when enqueued:
    # one call would spread them, counting what it gave A)
    first = hg.enqueue(to=BOB, body="hi")
    second = hg.enqueue(to=CAROL, body="hi")
    assert (hg.explain(first)["line"], hg.explain(second)["line"]) == (LINE_A, LINE_A)

    # When they are dispatched and the first uses A's only new conversation
    hg.drain()

    # Then the second moves to line B, and explain names the cap that moved it
    assert hg.explain(second)["line"] == LINE_B
    assert decisions(hg, second) == [
        ("ENQUEUE", "enqueued"),
        ("REROUTE", "cap_new_conversations_per_day"),
        ("SEND", "ok"),
        ("SENT", "sent"),
    ]


ONE_NEW_EACH = POLICY + "\n[caps]\nnew_conversations_per_day = 1\n"


@pytest.mark.parametrize("policy_text", [ONE_NEW_EACH])
def test_new_recipient_waits_for_the_cap_when_no_line_has_room(hg: Healthgate) -> None:
    # Given both lines used their one new conversation of the day
    hg.enqueue(to=BOB, body="hello", line=LINE_A)
    hg.enqueue(to=CAROL, body="hello", line=LINE_B)
    hg.drain()

    # When a third new recipient comes
    message_id = hg.enqueue(to=NEW, body="hello")
    hg.drain()

    # Then it waits until a cap frees up, the cap named; it is not dropped
    explained = hg.explain(message_id)
    assert explained["state"] == "throttled"
    assert explained["decisions"][-1]["code"] == "cap_new_conversations_per_day"
    assert "new_conversations_per_day=1" in explained["decisions"][-1]["reason"]


def test_headroom_counts_every_cap_not_only_the_daily_one(hg: Healthgate) -> None:
    # Given line A sent to three recipients this hour and line B to none
    for i in range(3):
        hg.enqueue(to=recipient(i), body=f"n{i}", line=LINE_A)
    hg.drain()

    # When a new recipient is enqueued without a line
    message_id = hg.enqueue(to=NEW, body="hello")

    # Then it goes to B, the line with the most room under every cap
    assert hg.explain(message_id)["line"] == LINE_B


def test_line_turning_critical_mid_backlog(hg: Healthgate, sends: Sends) -> None:
    # Given Bob's conversation on line A, line B busier than A, and a backlog on A for
    # Bob and a new recipient
    hg.enqueue(to=BOB, body="first", line=LINE_A)
    hg.enqueue(to=recipient(1), body="b1", line=LINE_B)
    hg.enqueue(to=recipient(2), body="b2", line=LINE_B)
    hg.drain()
    existing = hg.enqueue(to=BOB, body="second")
    new = hg.enqueue(to=NEW, body="hello")
    new_on_a = hg.explain(new)["line"]

    # When line A turns CRITICAL before the backlog is dispatched
    hg.set_line_health(LINE_A, "CRITICAL")
    hg.drain()

    # Then Bob's message waits on A (deferred, not moved); the new recipient goes to B
    assert new_on_a == LINE_A
    assert (hg.explain(existing)["line"], hg.explain(existing)["state"]) == (LINE_A, "deferred")
    assert decisions(hg, existing)[-1] == ("DEFER", "line_critical")
    assert (hg.explain(new)["line"], hg.explain(new)["state"]) == (LINE_B, "sent")
    assert ("REROUTE", "line_critical") in decisions(hg, new)
    assert [s["line"] for s in sends()][3:] == [LINE_B]
