"""The pure policies at their edges: window boundaries, ties, retries, and what a
decision or an error says to the person reading it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from policies.codes import Code
from policies.config import OptOutMode, OptOutPolicy
from policies.content import repeat_to_at_risk_chat, same_body_spread
from policies.decision import send
from policies.errors import InvalidInput
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.keywords import Inbound
from policies.outcome import Failure, after_failure
from policies.signals import Consent, not_ahead, opted_out_since
from policies.statuses import Action, ChatHealth, parse_line_status
from policies.text import storable_time
from policies.usage import LineUsage
from tests.test_gate import BOB, CAROL, DAVE, LINE, NOW, ago, make_policy

EXACT = OptOutPolicy(mode=OptOutMode.EXACT)
LINQ = OptOutPolicy(mode=OptOutMode.LINQ)
OUT, IN, REPLY = Inbound.OPT_OUT, Inbound.OPT_IN, Inbound.REPLY


def facts(*pairs: tuple[Inbound, int]) -> list[Consent]:
    """Ledger facts, each (kind, minutes before NOW)."""
    return [Consent(kind, ago(minutes=minutes)) for kind, minutes in pairs]


@pytest.mark.parametrize(
    ("ledger", "policy", "since"),
    [
        ([], EXACT, None),
        ([(OUT, 10)], EXACT, 10),
        ([(OUT, 10), (IN, 5)], EXACT, None),
        ([(IN, 10), (OUT, 5)], EXACT, 5),
        # At one instant the opt-out wins.
        ([(IN, 5), (OUT, 5)], EXACT, 5),
        ([(OUT, 5), (IN, 5)], LINQ, 5),
        # Opted out since the first of the opt-outs after the last opt-in.
        ([(OUT, 30), (IN, 20), (OUT, 10), (OUT, 3)], EXACT, 10),
        # A reply speaks only where any later message opts back in.
        ([(OUT, 10), (REPLY, 5)], EXACT, 10),
        ([(OUT, 10), (REPLY, 5)], LINQ, None),
        ([(REPLY, 10), (OUT, 5)], LINQ, 5),
    ],
)
def test_the_ledger_says_since_when_the_recipient_is_opted_out(
    ledger: list[tuple[Inbound, int]], policy: OptOutPolicy, since: int | None
) -> None:
    expected = None if since is None else ago(minutes=since)

    assert opted_out_since(facts(*ledger), policy) == expected


def test_a_signal_at_the_edge_of_the_tolerance_is_taken_and_past_it_refused() -> None:
    tolerance = timedelta(minutes=5)
    edge = NOW + tolerance

    assert not_ahead(edge, "updated_at", NOW, tolerance) == edge
    with pytest.raises(InvalidInput) as refused:
        not_ahead(edge + timedelta(seconds=1), "updated_at", NOW, tolerance)
    assert (refused.value.field, refused.value.value) == (
        "updated_at",
        (edge + timedelta(seconds=1)).isoformat(),
    )
    assert "plus the tolerance of 300 s" in refused.value.problem


def test_a_time_with_no_utc_equivalent_is_bad_input_naming_it() -> None:
    late = datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))

    with pytest.raises(InvalidInput) as refused:
        storable_time(late, "send_at")

    assert (refused.value.field, refused.value.value, refused.value.problem) == (
        "send_at",
        late,
        "is out of range once converted to UTC",
    )
    assert storable_time(NOW, "send_at") == NOW


def test_an_unknown_line_status_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"line status 'PAUSED' is not one of ACTIVE, FLAGGED"):
        parse_line_status("PAUSED")


def test_a_send_says_why() -> None:
    assert (send().code, send().reason) == (Code.OK, "chat and line are fit to send")


# Windows: a send exactly a window ago has left it.

CONTENT = make_policy(
    content={"at_risk_repeat_window_hours": 12, "same_body_max_recipients_per_hour": 2}
)


def test_a_repeat_exactly_a_window_ago_is_no_repeat() -> None:
    assert repeat_to_at_risk_chat([ago(hours=12)], CONTENT, NOW, None) is None

    held = repeat_to_at_risk_chat([ago(hours=2)], CONTENT, NOW, None)
    assert held is not None
    assert held.reason == (
        f"a near-identical body went to this AT_RISK chat at {ago(hours=2).isoformat()}; "
        "held for 12 h or until a reply"
    )


def test_a_body_spread_exactly_an_hour_ago_has_left_the_hour() -> None:
    usage = LineUsage(by_body={"d": {CAROL: ago(hours=1), DAVE: ago(minutes=1)}})

    assert same_body_spread(usage, "d", BOB, LINE, CONTENT, NOW, None) is None

    usage = LineUsage(by_body={"d": {CAROL: ago(minutes=59), DAVE: ago(minutes=1)}})
    held = same_body_spread(usage, "d", BOB, LINE, CONTENT, NOW, None)
    assert held is not None
    assert held.reason == (
        f"line {LINE} sent a near-identical body to 2 recipients in the last hour "
        "(content.same_body_max_recipients_per_hour=2)"
    )


def test_an_at_risk_chat_throttle_says_the_limit_and_the_window() -> None:
    chat = ChatFacts(ChatHealth.AT_RISK, is_new=False, unanswered=(ago(hours=1),))

    decision = decide(MessageFacts(BOB), chat, LineFacts(LINE), LineUsage(), make_policy(), NOW)

    assert decision.reason == (
        "the chat is AT_RISK and has 1 unanswered message(s) in the last 24 h; "
        "a reply lifts the throttle"
    )


@pytest.mark.parametrize(
    ("caps", "usage", "says"),
    [
        (
            {"sends_per_day": 2},
            LineUsage(day_count=2, day=[ago(hours=3), ago(hours=2)]),
            "sends_per_day=2",
        ),
        (
            {"new_conversations_per_day": 1},
            LineUsage(new_chats=[ago(hours=2)]),
            "new_conversations_per_day=1",
        ),
    ],
)
def test_a_cap_throttle_names_the_cap_and_its_value(
    caps: dict[str, int], usage: LineUsage, says: str
) -> None:
    decision = decide(
        MessageFacts(BOB), ChatFacts(), LineFacts(LINE), usage, make_policy(caps=caps), NOW
    )

    assert decision.action is Action.THROTTLE
    assert says in decision.reason


# Retries after a provider's answer.

RETRIES = make_policy(
    dispatch={"max_attempts": 3, "retry_base_seconds": 30, "retry_max_seconds": 3600}
)


@pytest.mark.parametrize(
    ("attempts", "action", "wait"),
    [(1, Action.THROTTLE, 30), (2, Action.THROTTLE, 60), (3, Action.FAIL, None)],
)
def test_retries_back_off_doubling_and_stop_at_the_last_attempt(
    attempts: int, action: Action, wait: int | None
) -> None:
    decision = after_failure(Failure.TRANSIENT, "HTTP 503", attempts, RETRIES, NOW)

    assert decision.action is action
    if wait is None:
        assert (decision.code, decision.reason) == (
            Code.ATTEMPTS_EXHAUSTED,
            "gave up after 3 attempts; last: HTTP 503",
        )
    else:
        assert decision.not_before == NOW + timedelta(seconds=wait)
        assert decision.reason == (
            f"provider: HTTP 503; attempt {attempts} of 3, retry in {wait} s"
        )
