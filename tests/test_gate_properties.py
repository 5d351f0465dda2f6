"""Properties of the pure gate: for any facts, usage and moment, the rules always hold."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import Policy
from policies.decision import Decision
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.statuses import Action, ChatHealth, LineReputation, LineStatus
from policies.usage import DAY, HOUR, MINUTE, LineUsage
from tests.conftest import LINE_A, START, budget, examples

pytestmark = pytest.mark.timeout(budget(60))

RECIPIENTS = ("+14155550123", "+14155550124", "+14155550125", "+14155550126")
BODIES = ("a" * 32, "b" * 32)

offsets = st.integers(min_value=0, max_value=2 * 86_400)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Policies with small caps, so that every cap binds somewhere in a short run."""
    small = st.integers(min_value=1, max_value=6)
    hours = st.sampled_from([0.01, 0.5, 1.0, 24.0, 72.0])
    return Policy.model_validate(
        {
            "lines": [{"number": LINE_A}],
            "chat": {
                "at_risk_max_unanswered": draw(small),
                "at_risk_window_hours": draw(hours),
                "critical_max_hold_hours": draw(hours),
            },
            "line": {
                "at_risk_pace_factor": draw(st.sampled_from([0.1, 0.5, 1.0])),
                "recovery_ramp_hours": draw(st.sampled_from([0.0, 1.0, 24.0])),
            },
            "caps": {
                "sends_per_minute": draw(small),
                "new_conversations_per_day": draw(small),
                "distinct_recipients_per_hour": draw(small),
                "sends_per_day": draw(st.integers(min_value=1, max_value=20)),
                "sends_per_recipient_per_minute": draw(small),
                "sends_per_recipient_per_day": draw(st.integers(min_value=1, max_value=12)),
            },
            "content": {
                "at_risk_repeat_window_hours": draw(hours),
                "same_body_max_recipients_per_hour": draw(small),
            },
        }
    )


def times_before(now: datetime, draw: st.DrawFn, most: int = 8) -> tuple[datetime, ...]:
    seconds = draw(st.lists(offsets, max_size=most))
    return tuple(sorted(now - timedelta(seconds=s) for s in seconds))


@st.composite
def usages(draw: st.DrawFn, now: datetime) -> LineUsage:
    """What the line sent over the last two days, with the day's times loaded."""
    usage = LineUsage(day=[])
    sends = draw(
        st.lists(
            st.tuples(offsets, st.sampled_from(RECIPIENTS), st.booleans(), st.sampled_from(BODIES)),
            max_size=30,
        )
    )
    for seconds, recipient, new_chat, body in sorted(sends, reverse=True):
        usage.record(recipient, now - timedelta(seconds=seconds), new_chat=new_chat, body_hash=body)
    return usage


@st.composite
def situations(draw: st.DrawFn) -> dict[str, Any]:
    """Arbitrary message, chat and line facts, usage and moment for one decision."""
    now = START + timedelta(seconds=draw(st.integers(min_value=0, max_value=10 * 86_400)))
    maybe_time = st.one_of(
        st.none(), st.integers(-3 * 86_400, 3 * 86_400).map(lambda s: now + timedelta(seconds=s))
    )
    message = MessageFacts(
        recipient=draw(st.sampled_from(RECIPIENTS)),
        expires_at=draw(maybe_time),
        held_since=draw(st.one_of(st.none(), offsets.map(lambda s: now - timedelta(seconds=s)))),
        may_reroute=draw(st.booleans()),
        body_hash=draw(st.one_of(st.none(), st.sampled_from(BODIES))),
    )
    chat = ChatFacts(
        health=draw(st.sampled_from(ChatHealth)),
        recipient_opted_out=draw(st.booleans()),
        is_new=draw(st.booleans()),
        unanswered=times_before(now, draw),
        same_body_sent=times_before(now, draw),
    )
    line = draw(
        st.one_of(
            st.none(),
            st.builds(
                LineFacts,
                number=st.just(LINE_A),
                reputation=st.sampled_from(LineReputation),
                status=st.sampled_from(LineStatus),
                recovered_at=st.one_of(
                    st.none(), offsets.map(lambda s: now - timedelta(seconds=s))
                ),
            ),
        )
    )
    return {
        "message": message,
        "chat": chat,
        "line": line,
        "usage": draw(usages(now)),
        "policy": draw(policies()),
        "now": now,
    }


def decided(case: dict[str, Any]) -> Decision:
    return decide(**case)


@settings(max_examples=examples(100))
@given(situations())
def test_an_opted_out_chat_or_recipient_is_always_dropped(case: dict[str, Any]) -> None:
    # Given any facts, When the chat or the recipient is opted out
    opted_out = case["chat"].health is ChatHealth.OPTED_OUT or case["chat"].recipient_opted_out

    # Then the decision is DROP, and only then
    assert (decided(case).action is Action.DROP) == opted_out


@settings(max_examples=examples(100))
@given(situations())
def test_a_critical_or_flagged_line_or_none_never_sends(case: dict[str, Any]) -> None:
    line: LineFacts | None = case["line"]
    paused = line is None or (
        line.reputation is LineReputation.CRITICAL or line.status is LineStatus.FLAGGED
    )

    if paused:
        assert decided(case).action is not Action.SEND


@settings(max_examples=examples(100))
@given(situations())
def test_a_critical_chat_never_sends(case: dict[str, Any]) -> None:
    if case["chat"].health is ChatHealth.CRITICAL:
        assert decided(case).action is not Action.SEND


@settings(max_examples=examples(100))
@given(situations())
def test_throttle_and_defer_look_again_later_but_not_after_expiry(case: dict[str, Any]) -> None:
    decision = decided(case)

    if decision.action in (Action.THROTTLE, Action.DEFER):
        assert decision.not_before is not None
        assert decision.not_before > case["now"]
        expires_at = case["message"].expires_at
        assert expires_at is None or decision.not_before <= expires_at
    else:
        assert decision.not_before is None


@settings(max_examples=examples(100))
@given(situations())
def test_an_expired_message_never_sends(case: dict[str, Any]) -> None:
    expires_at = case["message"].expires_at

    if expires_at is not None and case["now"] >= expires_at:
        assert decided(case).action in (Action.EXPIRE, Action.DROP)


@settings(max_examples=examples(100))
@given(situations())
def test_every_decision_carries_a_code_and_a_reason(case: dict[str, Any]) -> None:
    decision = decided(case)

    assert decision.code
    assert decision.reason


# A run of decisions on one line: each step either moves the clock on, or jumps to the
# moment a THROTTLE named, which is where an off-by-one at a window's edge would show.
steps = st.lists(
    st.tuples(
        st.sampled_from(RECIPIENTS),
        st.sampled_from(BODIES),
        st.one_of(st.just(None), st.integers(min_value=0, max_value=4_000)),
    ),
    min_size=1,
    max_size=60,
)


def count_in(times: list[datetime], at: datetime, window: timedelta) -> int:
    return sum(1 for t in times if at - window < t <= at)


CAPS = (
    "sends_per_minute",
    "sends_per_day",
    "sends_per_recipient_per_minute",
    "sends_per_recipient_per_day",
    "distinct_recipients_per_hour",
    "new_conversations_per_day",
)


def caps_at(
    policy: Policy, reputation: LineReputation, recovered_at: datetime | None, at: datetime
) -> dict[str, int]:
    """The caps a line runs at, worked out here from SPEC and the policy file, not by the
    code under test: an AT_RISK line at the pace factor; a line back to HEALTHY ramping
    in a straight line from that factor to full over the ramp; never below one."""
    factor = 1.0
    start = policy.line.at_risk_pace_factor
    ramp = timedelta(hours=policy.line.recovery_ramp_hours)
    if reputation is LineReputation.AT_RISK:
        factor = start
    elif recovered_at is not None and ramp > timedelta(0) and at < recovered_at + ramp:
        factor = start + (1 - start) * max(0.0, (at - recovered_at) / ramp)
    caps = {name: getattr(policy.caps, name) for name in CAPS}
    if factor >= 1:
        return caps
    return {name: max(1, math.floor(cap * factor)) for name, cap in caps.items()}


@settings(max_examples=examples(300))
@given(
    policies(),
    st.sampled_from([LineReputation.HEALTHY, LineReputation.AT_RISK]),
    st.one_of(st.none(), st.integers(0, 86_400).map(lambda s: START - timedelta(seconds=s))),
    steps,
)
def test_sends_fed_back_into_usage_never_exceed_any_cap(
    policy: Policy,
    reputation: LineReputation,
    recovered_at: datetime | None,
    run: list[tuple[str, str, int | None]],
) -> None:
    # Given a line whose usage records every SEND the gate gives, as dispatch does
    line = LineFacts(LINE_A, reputation, recovered_at=recovered_at)
    usage = LineUsage(day=[])
    now = START
    sent: list[tuple[datetime, str, bool, str]] = []
    talked: set[str] = set()
    for recipient, body, advance in run:
        # When messages are decided one after the other
        message = MessageFacts(recipient=recipient, body_hash=body)
        chat = ChatFacts(is_new=recipient not in talked)
        decision = decide(message, chat, line, usage, policy, now)
        if decision.action is Action.SEND:
            usage.record(recipient, now, new_chat=chat.is_new, body_hash=body)
            sent.append((now, recipient, chat.is_new, body))
            talked.add(recipient)
        else:
            assert decision.action is Action.THROTTLE
        if advance is None and decision.not_before is not None:
            now = decision.not_before
        else:
            now += timedelta(seconds=advance or 0)

    # Then at every send, every window holds no more than its cap as applied then
    for at, to, _, digest in sent:
        caps = caps_at(policy, reputation, recovered_at, at)
        before = [s for s in sent if s[0] <= at]
        times = [s[0] for s in before]
        assert count_in(times, at, MINUTE) <= caps["sends_per_minute"]
        assert count_in(times, at, DAY) <= caps["sends_per_day"]
        assert (
            count_in([s[0] for s in before if s[1] == to], at, MINUTE)
            <= caps["sends_per_recipient_per_minute"]
        )
        assert (
            count_in([s[0] for s in before if s[1] == to], at, DAY)
            <= caps["sends_per_recipient_per_day"]
        )
        assert (
            len({s[1] for s in before if s[0] > at - HOUR})
            <= (caps["distinct_recipients_per_hour"])
        )
        assert (
            count_in([s[0] for s in before if s[2]], at, DAY) <= caps["new_conversations_per_day"]
        )
        same_body = {s[1] for s in before if s[3] == digest and s[0] > at - HOUR}
        assert len(same_body) <= policy.content.same_body_max_recipients_per_hour


@settings(max_examples=examples(300))
@given(
    policies(),
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=30 * 3600)),
        min_size=1,
        max_size=40,
    ),
)
def test_an_at_risk_chat_never_has_more_unanswered_sends_than_allowed(
    policy: Policy, run: list[tuple[bool, int]]
) -> None:
    # Given an AT_RISK chat on a line with room, and a recipient who sometimes replies
    line = LineFacts(LINE_A)
    now = START
    unanswered: list[datetime] = []
    sends: list[datetime] = []
    replies: list[datetime] = []
    for replied, advance in run:
        if replied:
            replies.append(now)
            unanswered = []
        # When the chat's next message is decided (its usage fresh: only the chat binds)
        chat = ChatFacts(health=ChatHealth.AT_RISK, is_new=False, unanswered=tuple(unanswered))
        decision = decide(MessageFacts(RECIPIENTS[0]), chat, line, LineUsage(), policy, now)
        if decision.action is Action.SEND:
            unanswered.append(now)
            sends.append(now)
        now += timedelta(seconds=advance)

    # Then no window ever holds more unanswered sends than the policy allows
    window = policy.chat.at_risk_window
    for at in sends:
        last_reply = max((r for r in replies if r <= at), default=None)
        since = [s for s in sends if s <= at and (last_reply is None or s > last_reply)]
        assert count_in(since, at, window) <= policy.chat.at_risk_max_unanswered
