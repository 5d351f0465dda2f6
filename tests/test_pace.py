"""Pace and content rules as pure functions: tables of (given, expected)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from policies.content import body_digest, normalise
from policies.decision import Decision
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.pace import line_limits, ramp_factor
from policies.statuses import Action, ChatHealth, LineReputation
from policies.usage import LineUsage
from tests.test_gate import BOB, CAROL, DAVE, LINE, NOW, ago, later, make_policy, sent

RAMP = make_policy(line={"at_risk_pace_factor": 0.5, "recovery_ramp_hours": 24})


@pytest.mark.parametrize(
    ("recovered_at", "now", "expected"),
    [
        (None, NOW, 1.0),
        (NOW, NOW, 0.5),
        (ago(hours=6), NOW, 0.625),
        (ago(hours=12), NOW, 0.75),
        (ago(hours=24), NOW, 1.0),
        (ago(days=3), NOW, 1.0),
        # A recovery stamped a little ahead of this worker's clock starts at the bottom.
        (later(minutes=1), NOW, 0.5),
    ],
)
def test_ramp_factor(recovered_at: datetime | None, now: datetime, expected: float) -> None:
    assert ramp_factor(recovered_at, now, RAMP) == pytest.approx(expected)


def test_ramp_of_zero_hours_means_full_pace_at_once() -> None:
    policy = make_policy(line={"recovery_ramp_hours": 0})
    assert ramp_factor(NOW, NOW, policy) == 1.0


def test_ramp_of_zero_hours_is_full_pace_even_if_recovery_is_stamped_ahead() -> None:
    # Another worker's clock a little ahead stamped the recovery: no ramp still means
    # full pace at once (and no division by a ramp of zero).
    policy = make_policy(line={"recovery_ramp_hours": 0})
    assert ramp_factor(later(seconds=2), NOW, policy) == 1.0


@pytest.mark.parametrize(
    ("reputation", "recovered_at", "per_minute", "note"),
    [
        (LineReputation.HEALTHY, None, 20, ""),
        (LineReputation.AT_RISK, None, 10, " (AT_RISK pace)"),
        # AT_RISK pace does not ramp: the ramp is for lines back to HEALTHY.
        (LineReputation.AT_RISK, ago(hours=12), 10, " (AT_RISK pace)"),
        (LineReputation.HEALTHY, NOW, 10, " (recovery ramp at 50%)"),
        (LineReputation.HEALTHY, ago(hours=12), 15, " (recovery ramp at 75%)"),
        (LineReputation.HEALTHY, ago(hours=24), 20, ""),
    ],
)
def test_line_limits_follow_reputation_and_ramp(
    reputation: LineReputation, recovered_at: datetime | None, per_minute: int, note: str
) -> None:
    limits = line_limits(RAMP.caps_for(LINE), reputation, recovered_at, NOW, RAMP)
    assert (limits.sends_per_minute, limits.note) == (per_minute, note)


def test_recovering_line_is_throttled_at_its_ramped_pace() -> None:
    # Given a line recovered 12 h ago (75% of 4 a minute = 3) that sent 3 in the minute
    policy = make_policy(caps={"sends_per_minute": 4}, line={"recovery_ramp_hours": 24})
    usage = sent((CAROL, ago(seconds=50)), (DAVE, ago(seconds=40)), (CAROL, ago(seconds=30)))
    line = LineFacts(LINE, recovered_at=ago(hours=12))

    # When one more is decided
    decision = decide(MessageFacts(BOB), ChatFacts(is_new=False), line, usage, policy, NOW)

    # Then it waits for the minute, and the reason says the ramp set the cap
    assert decision == Decision(
        Action.THROTTLE,
        "cap_sends_per_minute",
        f"line {LINE} reached sends_per_minute=3 (recovery ramp at 75%)",
        later(seconds=10),
    )


@pytest.mark.parametrize(
    ("first", "second", "near_identical"),
    [
        ("Your code is 1234", "your  code is 98", True),
        ("Hi Bob, see https://x.example/a?b=1", "hi bob, see www.example.org/z", True),
        ("Sale ends 11/30!", "SALE ENDS 12/01!", True),
        ("  Hello\tthere\n", "hello there", True),
        ("\uff28\uff45\uff4c\uff4c\uff4f", "hello", True),  # full-width letters fold (NFKC)
        ("Your order shipped", "Your order arrived", False),
        ("Hi Bob", "Hi Carol", False),
    ],
)
def test_near_identical_bodies_share_a_digest(
    first: str, second: str, near_identical: bool
) -> None:
    assert (body_digest(first) == body_digest(second)) is near_identical


def test_normalise_folds_urls_digits_case_and_spaces() -> None:
    assert normalise(" Pay $20 at HTTPS://pay.example/x1  now ") == "pay $0 at <url> now"


def test_digest_fits_the_body_hash_column() -> None:
    assert len(body_digest("anything")) == 32


DIGEST = body_digest("Reminder: your visit is at 10:30")
CONTENT = make_policy(
    content={"at_risk_repeat_window_hours": 12, "same_body_max_recipients_per_hour": 2}
)
AT_RISK = ChatHealth.AT_RISK


@pytest.mark.parametrize(
    ("chat", "usage", "expected"),
    [
        # A repeat to an AT_RISK chat inside the window waits until the window passes
        # (a reply lifts it sooner).
        (
            ChatFacts(AT_RISK, is_new=False, same_body_sent=(ago(hours=30), ago(hours=2))),
            LineUsage(),
            ("THROTTLE", "content_repeated", later(hours=10)),
        ),
        # Outside the window it is no repeat.
        (
            ChatFacts(AT_RISK, is_new=False, same_body_sent=(ago(hours=13),)),
            LineUsage(),
            ("SEND", "ok", None),
        ),
        # A HEALTHY chat may get the same body again.
        (
            ChatFacts(ChatHealth.HEALTHY, is_new=False, same_body_sent=(ago(hours=2),)),
            LineUsage(),
            ("SEND", "ok", None),
        ),
        # The line sent this body to two others in the hour: a third recipient waits
        # until the older of them leaves the hour.
        (
            ChatFacts(is_new=False),
            LineUsage(by_body={DIGEST: {CAROL: ago(minutes=50), DAVE: ago(minutes=10)}}),
            ("THROTTLE", "content_same_body", later(minutes=10)),
        ),
        # One of the two is outside the hour: room for one more.
        (
            ChatFacts(is_new=False),
            LineUsage(by_body={DIGEST: {CAROL: ago(minutes=61), DAVE: ago(minutes=10)}}),
            ("SEND", "ok", None),
        ),
        # Bob already got it this hour: sending it to him again spreads nothing.
        (
            ChatFacts(is_new=False),
            LineUsage(by_body={DIGEST: {BOB: ago(minutes=5), DAVE: ago(minutes=10)}}),
            ("SEND", "ok", None),
        ),
    ],
)
def test_content_rules(
    chat: ChatFacts, usage: LineUsage, expected: tuple[str, str, datetime | None]
) -> None:
    message = MessageFacts(BOB, body_hash=DIGEST)
    decision = decide(message, chat, LineFacts(LINE), usage, CONTENT, NOW)
    assert (decision.action.value, decision.code, decision.not_before) == expected


def test_content_hold_never_outlasts_expires_at() -> None:
    message = MessageFacts(BOB, body_hash=DIGEST, expires_at=later(hours=1))
    chat = ChatFacts(AT_RISK, is_new=False, same_body_sent=(ago(hours=2),))
    decision = decide(message, chat, LineFacts(LINE), LineUsage(), CONTENT, NOW)
    assert (decision.code, decision.not_before) == ("content_repeated", later(hours=1))


def test_same_body_spread_hold_never_outlasts_expires_at() -> None:
    # The line sent this body to two others in the hour: the third waits 10 minutes,
    # but the message expires in 5, so it is looked at again then (and expires).
    message = MessageFacts(BOB, body_hash=DIGEST, expires_at=later(minutes=5))
    usage = LineUsage(by_body={DIGEST: {CAROL: ago(minutes=50), DAVE: ago(minutes=10)}})

    decision = decide(message, ChatFacts(is_new=False), LineFacts(LINE), usage, CONTENT, NOW)

    assert (decision.code, decision.not_before) == ("content_same_body", later(minutes=5))


def test_without_a_digest_no_content_rule_applies() -> None:
    chat = ChatFacts(AT_RISK, is_new=False, same_body_sent=(ago(hours=2),))
    decision = decide(MessageFacts(BOB), chat, LineFacts(LINE), LineUsage(), CONTENT, NOW)
    assert decision.action is Action.SEND


def test_recovery_ramp_is_a_policy_key_with_a_default() -> None:
    assert make_policy().line.recovery_ramp == timedelta(hours=24)
