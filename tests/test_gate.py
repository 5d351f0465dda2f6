"""The health gate as a pure function: tables of (given facts, action, code, not_before)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest

from policies.config import Policy, parse_policy
from policies.decision import Decision
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide, effective_limit
from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
from policies.usage import DAY, HOUR, MINUTE, LineUsage, earliest_allowed

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LINE = "+14155550100"
OTHER_LINE = "+14155550101"
BOB = "+14155550123"
CAROL = "+14155550124"
DAVE = "+14155550125"


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def later(**delta: float) -> datetime:
    return NOW + timedelta(**delta)


def make_policy(**sections: Any) -> Policy:
    """A two-line policy with every other section at its default unless given."""
    data = {"lines": [{"number": LINE}, {"number": OTHER_LINE}], **sections}
    return parse_policy(data, "test.toml")


def with_caps(**caps: int) -> Policy:
    return make_policy(caps=caps)


POLICY = make_policy()


def sent(
    *sends: tuple[str, datetime],
    new_chats: tuple[datetime, ...] = (),
    day_count: int | None = None,
    day: list[datetime] | None = None,
) -> LineUsage:
    """Usage of a line that dispatched ``sends`` (recipient, at), built without ``record``."""
    by_recipient: dict[str, list[datetime]] = {}
    for recipient, at in sorted(sends, key=lambda s: s[1]):
        by_recipient.setdefault(recipient, []).append(at)
    return LineUsage(
        recent=sorted(at for _, at in sends),
        day_count=len(sends) if day_count is None else day_count,
        day=day,
        new_chats=list(new_chats),
        by_recipient=by_recipient,
    )


class Given(NamedTuple):
    """The inputs of one decision; ``usage`` None means a line that sent nothing."""

    message: MessageFacts = MessageFacts(BOB)
    chat: ChatFacts = ChatFacts(is_new=False)
    line: LineFacts | None = LineFacts(LINE)
    usage: LineUsage | None = None
    policy: Policy = POLICY


def run(given: Given) -> Decision:
    usage = LineUsage() if given.usage is None else given.usage
    return decide(given.message, given.chat, given.line, usage, given.policy, NOW)


def at_risk(*unanswered: datetime) -> ChatFacts:
    return ChatFacts(health=ChatHealth.AT_RISK, is_new=False, unanswered=unanswered)


CRITICAL_CHAT = ChatFacts(health=ChatHealth.CRITICAL, is_new=False)


@pytest.mark.parametrize(
    ("given", "action", "code", "not_before"),
    [
        pytest.param(Given(), Action.SEND, "ok", None, id="healthy_chat_sends"),
        pytest.param(
            Given(chat=ChatFacts(is_new=True)),
            Action.SEND,
            "ok",
            None,
            id="healthy_new_chat_sends",
        ),
        pytest.param(
            Given(chat=at_risk()), Action.SEND, "ok", None, id="at_risk_chat_without_unanswered"
        ),
        pytest.param(
            Given(chat=at_risk(ago(hours=2))),
            Action.THROTTLE,
            "chat_at_risk",
            later(hours=22),
            id="at_risk_chat_one_unanswered_in_window_throttles_to_oldest_plus_window",
        ),
        pytest.param(
            Given(chat=at_risk(ago(hours=25))),
            Action.SEND,
            "ok",
            None,
            id="at_risk_chat_unanswered_older_than_window_sends",
        ),
        pytest.param(
            Given(chat=at_risk(ago(hours=24))),
            Action.SEND,
            "ok",
            None,
            id="at_risk_chat_unanswered_exactly_window_old_has_left_the_window",
        ),
        pytest.param(
            Given(chat=at_risk(ago(hours=30), ago(hours=3))),
            Action.THROTTLE,
            "chat_at_risk",
            later(hours=21),
            id="at_risk_chat_counts_only_unanswered_inside_the_window",
        ),
        pytest.param(
            Given(
                chat=at_risk(ago(hours=5)),
                policy=make_policy(chat={"at_risk_max_unanswered": 2}),
            ),
            Action.SEND,
            "ok",
            None,
            id="at_risk_chat_below_a_raised_unanswered_limit_sends",
        ),
        pytest.param(
            Given(
                chat=at_risk(ago(hours=5), ago(hours=1)),
                policy=make_policy(chat={"at_risk_max_unanswered": 2}),
            ),
            Action.THROTTLE,
            "chat_at_risk",
            later(hours=19),
            id="at_risk_chat_at_a_raised_limit_waits_for_the_oldest",
        ),
        pytest.param(
            Given(
                chat=at_risk(ago(hours=2)),
                policy=make_policy(chat={"at_risk_window_hours": 6}),
            ),
            Action.THROTTLE,
            "chat_at_risk",
            later(hours=4),
            id="at_risk_chat_uses_the_configured_window",
        ),
        pytest.param(
            Given(
                message=MessageFacts(BOB, expires_at=later(hours=1)),
                chat=at_risk(ago(hours=2)),
            ),
            Action.THROTTLE,
            "chat_at_risk",
            later(hours=1),
            id="at_risk_throttle_looks_again_at_expiry_when_earlier",
        ),
    ],
)
def test_chat_health(given: Given, action: Action, code: str, not_before: datetime | None) -> None:
    # Given a chat in some health, When the gate decides, Then the action follows the health.
    decision = run(given)

    assert (decision.action, decision.code, decision.not_before) == (action, code, not_before)


@pytest.mark.parametrize(
    ("given", "action", "code", "not_before"),
    [
        pytest.param(
            Given(chat=ChatFacts(health=ChatHealth.OPTED_OUT, is_new=False)),
            Action.DROP,
            "chat_opted_out",
            None,
            id="opted_out_chat_drops",
        ),
        pytest.param(
            Given(chat=ChatFacts(recipient_opted_out=True, is_new=False)),
            Action.DROP,
            "recipient_opted_out",
            None,
            id="recipient_opted_out_elsewhere_drops_on_a_healthy_chat",
        ),
        pytest.param(
            Given(
                chat=ChatFacts(recipient_opted_out=True),
                line=LineFacts(LINE, reputation=LineReputation.CRITICAL),
                message=MessageFacts(BOB, may_reroute=True),
            ),
            Action.DROP,
            "recipient_opted_out",
            None,
            id="recipient_opted_out_is_dropped_not_rerouted",
        ),
        pytest.param(
            Given(message=MessageFacts(BOB, expires_at=ago(minutes=1))),
            Action.EXPIRE,
            "expires_at",
            None,
            id="expires_at_passed_expires",
        ),
        pytest.param(
            Given(message=MessageFacts(BOB, expires_at=NOW)),
            Action.EXPIRE,
            "expires_at",
            None,
            id="expires_at_reached_exactly_expires",
        ),
        pytest.param(
            Given(message=MessageFacts(BOB, expires_at=later(seconds=1))),
            Action.SEND,
            "ok",
            None,
            id="expires_at_still_ahead_sends",
        ),
        pytest.param(
            Given(
                message=MessageFacts(BOB, expires_at=ago(minutes=1)),
                chat=ChatFacts(health=ChatHealth.OPTED_OUT),
            ),
            Action.DROP,
            "chat_opted_out",
            None,
            id="opt_out_wins_over_expiry",
        ),
        pytest.param(
            Given(
                message=MessageFacts(BOB, expires_at=ago(minutes=1)),
                line=LineFacts(LINE, reputation=LineReputation.CRITICAL),
            ),
            Action.EXPIRE,
            "expires_at",
            None,
            id="expiry_wins_over_a_paused_line",
        ),
    ],
)
def test_terminal_decisions(
    given: Given, action: Action, code: str, not_before: datetime | None
) -> None:
    # Given an opt-out or a passed deadline, When the gate decides, Then it is terminal.
    decision = run(given)

    assert (decision.action, decision.code, decision.not_before) == (action, code, not_before)


@pytest.mark.parametrize(
    ("given", "action", "code", "not_before"),
    [
        pytest.param(
            Given(chat=CRITICAL_CHAT),
            Action.DEFER,
            "chat_critical",
            later(hours=72),
            id="critical_chat_defers_to_now_plus_max_hold",
        ),
        pytest.param(
            Given(chat=CRITICAL_CHAT, message=MessageFacts(BOB, held_since=ago(hours=10))),
            Action.DEFER,
            "chat_critical",
            later(hours=62),
            id="critical_chat_defers_to_held_since_plus_max_hold",
        ),
        pytest.param(
            Given(chat=CRITICAL_CHAT, message=MessageFacts(BOB, expires_at=later(hours=5))),
            Action.DEFER,
            "chat_critical",
            later(hours=5),
            id="critical_chat_defers_to_expires_at_when_earlier",
        ),
        pytest.param(
            Given(
                chat=CRITICAL_CHAT,
                policy=make_policy(chat={"critical_max_hold_hours": 1.5}),
            ),
            Action.DEFER,
            "chat_critical",
            later(minutes=90),
            id="critical_chat_uses_the_configured_max_hold",
        ),
        pytest.param(
            Given(chat=CRITICAL_CHAT, message=MessageFacts(BOB, held_since=ago(hours=73))),
            Action.EXPIRE,
            "max_hold",
            None,
            id="critical_chat_held_longer_than_max_hold_expires",
        ),
        pytest.param(
            Given(chat=CRITICAL_CHAT, message=MessageFacts(BOB, held_since=ago(hours=72))),
            Action.EXPIRE,
            "max_hold",
            None,
            id="critical_chat_held_exactly_max_hold_expires",
        ),
        pytest.param(
            Given(line=LineFacts(LINE, reputation=LineReputation.CRITICAL)),
            Action.DEFER,
            "line_critical",
            later(hours=72),
            id="critical_line_defers",
        ),
        pytest.param(
            Given(
                line=LineFacts(LINE, reputation=LineReputation.CRITICAL),
                message=MessageFacts(BOB, may_reroute=True),
                chat=ChatFacts(is_new=True),
            ),
            Action.REROUTE,
            "line_critical",
            None,
            id="critical_line_reroutes_a_message_the_router_may_move",
        ),
        pytest.param(
            Given(
                line=LineFacts(LINE, reputation=LineReputation.CRITICAL),
                message=MessageFacts(BOB, held_since=ago(hours=80)),
            ),
            Action.EXPIRE,
            "max_hold",
            None,
            id="critical_line_held_longer_than_max_hold_expires",
        ),
        pytest.param(
            Given(line=LineFacts(LINE, status=LineStatus.FLAGGED)),
            Action.DEFER,
            "line_flagged",
            later(hours=72),
            id="flagged_line_defers",
        ),
        pytest.param(
            Given(
                line=LineFacts(LINE, reputation=LineReputation.CRITICAL, status=LineStatus.FLAGGED)
            ),
            Action.DEFER,
            "line_flagged",
            later(hours=72),
            id="flagged_and_critical_line_defers_as_flagged",
        ),
        pytest.param(
            Given(
                line=LineFacts(LINE, status=LineStatus.FLAGGED),
                message=MessageFacts(BOB, may_reroute=True),
            ),
            Action.REROUTE,
            "line_flagged",
            None,
            id="flagged_line_reroutes_a_message_the_router_may_move",
        ),
        pytest.param(
            Given(line=None),
            Action.DEFER,
            "no_line",
            later(hours=72),
            id="no_line_defers",
        ),
        pytest.param(
            Given(line=None, message=MessageFacts(BOB, held_since=ago(hours=72, seconds=1))),
            Action.EXPIRE,
            "max_hold",
            None,
            id="no_line_held_longer_than_max_hold_expires",
        ),
        pytest.param(
            Given(line=LineFacts(LINE, reputation=LineReputation.CRITICAL), chat=at_risk()),
            Action.DEFER,
            "line_critical",
            later(hours=72),
            id="paused_line_holds_before_the_chat_throttle",
        ),
        pytest.param(
            Given(line=LineFacts(LINE, reputation=LineReputation.AT_RISK)),
            Action.SEND,
            "ok",
            None,
            id="at_risk_line_under_its_paced_caps_sends",
        ),
    ],
)
def test_holds(given: Given, action: Action, code: str, not_before: datetime | None) -> None:
    # Given a chat or line that cannot send, When the gate decides, Then it holds or moves it.
    decision = run(given)

    assert (decision.action, decision.code, decision.not_before) == (action, code, not_before)


@pytest.mark.parametrize(
    ("given", "action", "code", "not_before"),
    [
        pytest.param(
            Given(
                usage=sent((BOB, ago(seconds=50)), (CAROL, ago(seconds=30))),
                policy=with_caps(sends_per_minute=3),
            ),
            Action.SEND,
            "ok",
            None,
            id="sends_per_minute_below_cap_sends",
        ),
        pytest.param(
            Given(
                usage=sent(
                    (BOB, ago(seconds=50)), (CAROL, ago(seconds=30)), (DAVE, ago(seconds=10))
                ),
                policy=with_caps(sends_per_minute=3),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=10),
            id="sends_per_minute_reached_throttles_to_oldest_plus_60s",
        ),
        pytest.param(
            Given(
                usage=sent(
                    (BOB, ago(seconds=70)), (CAROL, ago(seconds=30)), (DAVE, ago(seconds=10))
                ),
                policy=with_caps(sends_per_minute=3),
            ),
            Action.SEND,
            "ok",
            None,
            id="sends_per_minute_ignores_sends_older_than_a_minute",
        ),
        pytest.param(
            Given(
                usage=sent(
                    (BOB, ago(seconds=55)),
                    (CAROL, ago(seconds=40)),
                    (DAVE, ago(seconds=30)),
                    (BOB, ago(seconds=5)),
                ),
                policy=with_caps(sends_per_minute=3),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=20),
            id="sends_per_minute_over_cap_waits_for_the_oldest_of_the_last_cap",
        ),
        pytest.param(
            Given(
                message=MessageFacts(BOB, expires_at=later(seconds=4)),
                usage=sent((CAROL, ago(seconds=50))),
                policy=with_caps(sends_per_minute=1),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=4),
            id="cap_throttle_looks_again_at_expiry_when_earlier",
        ),
        pytest.param(
            Given(
                usage=sent((CAROL, ago(minutes=50)), (DAVE, ago(minutes=20))),
                policy=with_caps(distinct_recipients_per_hour=2),
            ),
            Action.THROTTLE,
            "cap_distinct_recipients_per_hour",
            later(minutes=10),
            id="distinct_recipients_reached_throttles_a_new_recipient",
        ),
        pytest.param(
            Given(
                usage=sent((BOB, ago(minutes=50)), (CAROL, ago(minutes=20))),
                policy=with_caps(distinct_recipients_per_hour=2),
            ),
            Action.SEND,
            "ok",
            None,
            id="distinct_recipients_reached_sends_to_a_recipient_already_in_the_window",
        ),
        pytest.param(
            Given(
                usage=sent((CAROL, ago(minutes=70)), (DAVE, ago(minutes=20))),
                policy=with_caps(distinct_recipients_per_hour=2),
            ),
            Action.SEND,
            "ok",
            None,
            id="distinct_recipients_ignores_recipients_last_sent_over_an_hour_ago",
        ),
        pytest.param(
            Given(
                usage=sent(
                    (CAROL, ago(minutes=50)), (DAVE, ago(minutes=20)), (CAROL, ago(minutes=5))
                ),
                policy=with_caps(distinct_recipients_per_hour=2),
            ),
            Action.THROTTLE,
            "cap_distinct_recipients_per_hour",
            later(minutes=40),
            id="distinct_recipients_frees_up_when_a_recipients_last_send_leaves",
        ),
        pytest.param(
            Given(
                chat=ChatFacts(is_new=True),
                usage=sent(new_chats=(ago(hours=20), ago(hours=10))),
                policy=with_caps(new_conversations_per_day=2),
            ),
            Action.THROTTLE,
            "cap_new_conversations_per_day",
            later(hours=4),
            id="new_conversations_reached_throttles_a_new_chat",
        ),
        pytest.param(
            Given(
                chat=ChatFacts(is_new=False),
                usage=sent(new_chats=(ago(hours=20), ago(hours=10))),
                policy=with_caps(new_conversations_per_day=2),
            ),
            Action.SEND,
            "ok",
            None,
            id="new_conversations_reached_sends_on_an_existing_chat",
        ),
        pytest.param(
            Given(
                chat=ChatFacts(is_new=True),
                usage=sent(new_chats=(ago(hours=25), ago(hours=10))),
                policy=with_caps(new_conversations_per_day=2),
            ),
            Action.SEND,
            "ok",
            None,
            id="new_conversations_ignores_chats_started_over_a_day_ago",
        ),
        pytest.param(
            Given(
                usage=sent(day_count=2, day=None),
                policy=with_caps(sends_per_day=3),
            ),
            Action.SEND,
            "ok",
            None,
            id="sends_per_day_below_cap_needs_no_day_times",
        ),
        pytest.param(
            Given(
                usage=sent(day_count=3, day=[ago(hours=23), ago(hours=12), ago(hours=3)]),
                policy=with_caps(sends_per_day=3),
            ),
            Action.THROTTLE,
            "cap_sends_per_day",
            later(hours=1),
            id="sends_per_day_reached_throttles_to_oldest_plus_a_day",
        ),
        pytest.param(
            Given(
                usage=sent(day_count=3, day=[ago(hours=25), ago(hours=12), ago(hours=3)]),
                policy=with_caps(sends_per_day=3),
            ),
            Action.SEND,
            "ok",
            None,
            id="sends_per_day_ignores_loaded_times_older_than_a_day",
        ),
        pytest.param(
            Given(
                usage=sent((BOB, ago(seconds=40)), (BOB, ago(seconds=15))),
                policy=with_caps(sends_per_recipient_per_minute=2),
            ),
            Action.THROTTLE,
            "cap_sends_per_recipient_per_minute",
            later(seconds=20),
            id="sends_per_recipient_reached_throttles",
        ),
        pytest.param(
            Given(
                usage=sent((CAROL, ago(seconds=40)), (CAROL, ago(seconds=15))),
                policy=with_caps(sends_per_recipient_per_minute=2),
            ),
            Action.SEND,
            "ok",
            None,
            id="sends_per_recipient_counts_only_that_recipient",
        ),
        pytest.param(
            Given(
                usage=sent((CAROL, ago(seconds=50)), (BOB, ago(seconds=10))),
                policy=with_caps(sends_per_minute=2, sends_per_recipient_per_minute=1),
            ),
            Action.THROTTLE,
            "cap_sends_per_recipient_per_minute",
            later(seconds=50),
            id="the_cap_that_frees_up_last_binds",
        ),
    ],
)
def test_caps(given: Given, action: Action, code: str, not_before: datetime | None) -> None:
    # Given a line's recent usage, When the gate decides, Then it throttles at the binding cap.
    decision = run(given)

    assert (decision.action, decision.code, decision.not_before) == (action, code, not_before)


AT_RISK_LINE = LineFacts(LINE, reputation=LineReputation.AT_RISK)


@pytest.mark.parametrize(
    ("given", "action", "code", "not_before"),
    [
        pytest.param(
            Given(
                line=AT_RISK_LINE,
                usage=sent((CAROL, ago(seconds=40)), (DAVE, ago(seconds=20))),
                policy=with_caps(sends_per_minute=4),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=20),
            id="at_risk_line_halves_sends_per_minute",
        ),
        pytest.param(
            Given(
                usage=sent((CAROL, ago(seconds=40)), (DAVE, ago(seconds=20))),
                policy=with_caps(sends_per_minute=4),
            ),
            Action.SEND,
            "ok",
            None,
            id="healthy_line_same_usage_sends",
        ),
        pytest.param(
            Given(
                line=AT_RISK_LINE,
                usage=sent((CAROL, ago(seconds=20))),
                policy=with_caps(sends_per_minute=3),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=40),
            id="at_risk_line_rounds_the_paced_cap_down",
        ),
        pytest.param(
            Given(line=AT_RISK_LINE, policy=with_caps(sends_per_minute=1)),
            Action.SEND,
            "ok",
            None,
            id="at_risk_line_paced_cap_is_never_below_one",
        ),
        pytest.param(
            Given(
                line=AT_RISK_LINE,
                usage=sent((CAROL, ago(seconds=20))),
                policy=make_policy(
                    caps={"sends_per_minute": 4}, line={"at_risk_pace_factor": 0.25}
                ),
            ),
            Action.THROTTLE,
            "cap_sends_per_minute",
            later(seconds=40),
            id="at_risk_line_uses_the_configured_pace_factor",
        ),
        pytest.param(
            Given(
                line=AT_RISK_LINE,
                chat=ChatFacts(is_new=True),
                usage=sent(new_chats=(ago(hours=6),)),
                policy=with_caps(new_conversations_per_day=2),
            ),
            Action.THROTTLE,
            "cap_new_conversations_per_day",
            later(hours=18),
            id="at_risk_line_paces_new_conversations",
        ),
        pytest.param(
            Given(
                line=AT_RISK_LINE,
                usage=sent(day_count=2, day=[ago(hours=20), ago(hours=2)]),
                policy=with_caps(sends_per_day=4),
            ),
            Action.THROTTLE,
            "cap_sends_per_day",
            later(hours=4),
            id="at_risk_line_paces_sends_per_day",
        ),
    ],
)
def test_at_risk_line_pace(
    given: Given, action: Action, code: str, not_before: datetime | None
) -> None:
    # Given an AT_RISK line, When the gate decides, Then every cap is times the pace factor.
    decision = run(given)

    assert (decision.action, decision.code, decision.not_before) == (action, code, not_before)


@pytest.mark.parametrize(
    ("cap", "reputation", "factor", "expected"),
    [
        pytest.param(20, LineReputation.HEALTHY, 0.5, 20, id="healthy_keeps_the_cap"),
        pytest.param(20, LineReputation.AT_RISK, 0.5, 10, id="at_risk_multiplies"),
        pytest.param(5, LineReputation.AT_RISK, 0.5, 2, id="at_risk_floors"),
        pytest.param(1, LineReputation.AT_RISK, 0.5, 1, id="at_risk_never_below_one"),
        pytest.param(3, LineReputation.AT_RISK, 0.1, 1, id="at_risk_tiny_factor_still_one"),
        pytest.param(7, LineReputation.AT_RISK, 1.0, 7, id="at_risk_factor_one_keeps_the_cap"),
        pytest.param(20, LineReputation.CRITICAL, 0.5, 20, id="critical_is_paused_not_paced"),
    ],
)
def test_effective_limit(
    cap: int, reputation: LineReputation, factor: float, expected: int
) -> None:
    # Given a cap and a line reputation, When paced, Then the limit is floor(cap * factor) >= 1.
    policy = make_policy(line={"at_risk_pace_factor": factor})

    assert effective_limit(cap, reputation, policy) == expected


def test_throttle_reason_names_the_cap_its_paced_value_and_the_line() -> None:
    # Given an AT_RISK line at its paced sends_per_minute
    given = Given(
        line=AT_RISK_LINE,
        usage=sent((CAROL, ago(seconds=30))),
        policy=with_caps(sends_per_minute=2),
    )

    # When the gate decides
    decision = run(given)

    # Then the reason says which line, which cap, its value and why it is lower
    assert decision.reason == f"line {LINE} reached sends_per_minute=1 (AT_RISK pace)"


def test_per_line_caps_override_the_default_caps_in_the_gate() -> None:
    # Given OTHER_LINE limited to 1 send a minute, LINE on the default 20, one send on each
    policy = parse_policy(
        {
            "lines": [
                {"number": LINE},
                {"number": OTHER_LINE, "caps": {"sends_per_minute": 1}},
            ]
        },
        "test.toml",
    )
    usage = sent((CAROL, ago(seconds=30)))

    # When the gate decides a message on each line
    on_line = run(Given(line=LineFacts(LINE), usage=usage, policy=policy))
    on_other = run(Given(line=LineFacts(OTHER_LINE), usage=usage, policy=policy))

    # Then only OTHER_LINE throttles
    assert (on_line.action, on_other.action, on_other.code, on_other.not_before) == (
        Action.SEND,
        Action.THROTTLE,
        "cap_sends_per_minute",
        later(seconds=30),
    )


def test_daily_cap_reached_without_its_times_loaded_is_refused() -> None:
    # Given a count at the daily cap but the day's times not loaded
    given = Given(usage=sent(day_count=3, day=None), policy=with_caps(sends_per_day=3))

    # When the gate decides, Then it refuses to guess when the cap frees up
    with pytest.raises(ValueError, match="day's times were not loaded"):
        run(given)


def test_decisions_in_a_batch_see_earlier_sends_recorded() -> None:
    # Given a line with room for one send a minute and the first send recorded
    policy = with_caps(sends_per_minute=1)
    usage = LineUsage()
    first = decide(MessageFacts(BOB), ChatFacts(is_new=False), LineFacts(LINE), usage, policy, NOW)
    usage.record(BOB, NOW, new_chat=False)

    # When the next message of the batch is decided
    second = decide(
        MessageFacts(CAROL), ChatFacts(is_new=False), LineFacts(LINE), usage, policy, NOW
    )

    # Then the first was sent and the second waits a minute
    assert (first.action, second.action, second.not_before) == (
        Action.SEND,
        Action.THROTTLE,
        later(minutes=1),
    )


@pytest.mark.parametrize(
    ("times", "limit", "window", "expected"),
    [
        pytest.param((), 1, MINUTE, NOW, id="empty_window_allows_now"),
        pytest.param((ago(seconds=30),), 1, MINUTE, later(seconds=30), id="full_window_waits"),
        pytest.param((ago(seconds=60),), 1, MINUTE, NOW, id="event_exactly_window_old_is_out"),
        pytest.param((ago(seconds=59),), 1, MINUTE, later(seconds=1), id="event_just_inside"),
        pytest.param(
            (ago(seconds=90), ago(seconds=30)), 2, MINUTE, NOW, id="old_events_do_not_count"
        ),
        pytest.param(
            (ago(seconds=50), ago(seconds=40), ago(seconds=10)),
            2,
            MINUTE,
            later(seconds=20),
            id="waits_for_oldest_of_the_last_limit",
        ),
        pytest.param(
            (ago(seconds=50), ago(seconds=10)), 3, MINUTE, NOW, id="below_limit_allows_now"
        ),
        pytest.param((ago(minutes=30),), 1, HOUR, later(minutes=30), id="hour_window"),
        pytest.param((ago(hours=20), ago(hours=2)), 2, DAY, later(hours=4), id="day_window"),
    ],
)
def test_earliest_allowed(
    times: tuple[datetime, ...], limit: int, window: timedelta, expected: datetime
) -> None:
    # Given events in a sliding window, When asked for the next slot, Then it is exact.
    assert earliest_allowed(times, limit, window, NOW) == expected


def test_record_counts_a_dispatch_everywhere_the_gate_reads_it() -> None:
    # Given an empty usage with the day's times loaded
    usage = LineUsage(day=[])

    # When one dispatch to a new chat is recorded
    usage.record(BOB, NOW, new_chat=True)

    # Then every counter holds it
    assert usage == LineUsage(
        recent=[NOW],
        day_count=1,
        day=[NOW],
        new_chats=[NOW],
        by_recipient={BOB: [NOW]},
        recipient_day={BOB: [NOW]},
    )


def test_record_keeps_times_sorted_when_recorded_out_of_order() -> None:
    # Given a dispatch recorded at NOW
    usage = LineUsage(day=[])
    usage.record(BOB, NOW, new_chat=True)

    # When an earlier dispatch to the same recipient is recorded
    usage.record(BOB, ago(seconds=5), new_chat=True)

    # Then every list stays oldest first
    assert (usage.recent, usage.by_recipient[BOB], usage.day, usage.new_chats) == (
        [ago(seconds=5), NOW],
        [ago(seconds=5), NOW],
        [ago(seconds=5), NOW],
        [ago(seconds=5), NOW],
    )


def test_record_on_an_existing_chat_is_not_a_new_conversation() -> None:
    # Given an empty usage, When a dispatch on an existing chat is recorded
    usage = LineUsage()
    usage.record(BOB, NOW, new_chat=False)

    # Then it counts as a send but not as a new conversation
    assert (usage.recent, usage.day_count, usage.new_chats) == ([NOW], 1, [])


def test_record_leaves_unloaded_day_times_unloaded() -> None:
    # Given a usage far from the daily cap (day times not loaded)
    usage = LineUsage(day_count=7)

    # When a dispatch is recorded
    usage.record(BOB, NOW, new_chat=False)

    # Then only the count grows
    assert (usage.day_count, usage.day) == (8, None)


def test_record_keeps_recipients_apart() -> None:
    # Given a dispatch to BOB, When one to CAROL is recorded
    usage = LineUsage()
    usage.record(BOB, ago(seconds=10), new_chat=False)
    usage.record(CAROL, NOW, new_chat=False)

    # Then each recipient has only their own dispatch
    assert usage.by_recipient == {BOB: [ago(seconds=10)], CAROL: [NOW]}
