"""The pure policies at their edges: window boundaries, ties, retries, and what a
decision or an error says to the person reading it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from policies.codes import Code
from policies.config import OptOutMode, OptOutPolicy, load_policy, parse_policy
from policies.content import repeat_to_at_risk_chat, same_body_spread
from policies.decision import send
from policies.e164 import to_e164
from policies.errors import InvalidInput, PolicyFileError
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.keywords import Inbound
from policies.outcome import Failure, after_failure
from policies.pace import Limits, Verdict, check, ramp_factor
from policies.signals import (
    Consent,
    chat_health,
    latest,
    line_reputation,
    line_status,
    not_ahead,
    opted_out_since,
    supersedes,
)
from policies.statuses import (
    Action,
    ChatHealth,
    LineReputation,
    LineStatus,
    parse_chat_health,
    parse_field,
    parse_line_reputation,
    parse_line_status,
)
from policies.text import storable_text, storable_time
from policies.usage import LineUsage, TimesNotLoaded
from tests.test_gate import BOB, CAROL, DAVE, LINE, NOW, ago, later, make_policy

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


# Derived states: pure functions of the facts.


@pytest.mark.parametrize(
    ("reported", "critical", "healthy", "expected"),
    [
        (None, None, None, "HEALTHY"),
        ("AT_RISK", None, None, "AT_RISK"),
        ("AT_RISK", 10, None, "CRITICAL"),
        ("AT_RISK", 10, 5, "AT_RISK"),
        ("HEALTHY", 10, 5, "HEALTHY"),
        ("CRITICAL", 5, 10, "CRITICAL"),
        # A HEALTHY at the same instant as the CRITICAL does not end the pause.
        ("HEALTHY", 5, 5, "CRITICAL"),
    ],
)
def test_a_bucket_is_the_latest_report_unless_a_critical_is_not_yet_followed_by_healthy(
    reported: str | None, critical: int | None, healthy: int | None, expected: str
) -> None:
    critical_at = None if critical is None else ago(minutes=critical)
    healthy_at = None if healthy is None else ago(minutes=healthy)

    assert chat_health(reported, critical_at, healthy_at) == expected
    assert line_reputation(reported, critical_at, healthy_at) == expected


@pytest.mark.parametrize(
    ("reported", "active", "blocked", "expected"),
    [
        (None, None, None, "ACTIVE"),
        ("FLAGGED", 1, None, "FLAGGED"),
        ("ACTIVE", 10, 5, "FLAGGED"),
        ("ACTIVE", 5, 10, "ACTIVE"),
        ("ACTIVE", 5, 5, "FLAGGED"),
        (None, None, 5, "FLAGGED"),
    ],
)
def test_a_line_is_flagged_by_the_provider_or_by_healthgate_until_a_later_active(
    reported: str | None, active: int | None, blocked: int | None, expected: str
) -> None:
    active_at = None if active is None else ago(minutes=active)
    blocked_at = None if blocked is None else ago(minutes=blocked)

    assert line_status(reported, active_at, blocked_at) == expected


@pytest.mark.parametrize(
    ("status", "at", "known", "known_at", "expected"),
    [
        ("HEALTHY", 5, None, None, True),
        ("HEALTHY", 5, "CRITICAL", 10, True),
        ("HEALTHY", 10, "CRITICAL", 5, False),
        ("CRITICAL", 5, "HEALTHY", 5, True),
        ("HEALTHY", 5, "CRITICAL", 5, False),
        ("FLAGGED", 5, "ACTIVE", 5, True),
    ],
)
def test_a_report_supersedes_when_later_or_as_late_and_worse(
    status: str, at: int, known: str | None, known_at: int | None, expected: bool
) -> None:
    stamp = None if known_at is None else ago(minutes=known_at)

    assert supersedes(status, ago(minutes=at), known, stamp) is expected


def test_an_unknown_chat_status_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"is not one of HEALTHY, AT_RISK, CRITICAL, OPTED_OUT"):
        parse_chat_health("SICK")


def test_a_window_that_needs_its_times_says_so() -> None:
    with pytest.raises(TimesNotLoaded, match=r"3 events in the window reach the cap of 3 but 3"):
        LineUsage(recent_unloaded=3).minute_allowed(3, NOW)
    with pytest.raises(TimesNotLoaded, match=r"day's times were not loaded"):
        LineUsage(day_count=3).day_allowed(3, NOW)


# Windows of distinct recipients: a send exactly an hour ago has left the hour.


def test_a_recipient_last_sent_to_an_hour_ago_is_a_new_one_in_the_window() -> None:
    usage = LineUsage(by_recipient={BOB: [ago(hours=1)], CAROL: [ago(minutes=10)]})

    assert usage.recipients_last_hour(NOW) == 1
    assert usage.distinct_recipients_allowed(BOB, 1, NOW) == later(minutes=50)


def test_a_recipient_with_no_send_in_the_hour_is_not_counted() -> None:
    usage = LineUsage(by_recipient={BOB: [ago(hours=2)], CAROL: []})

    assert usage.recipients_last_hour(NOW) == 0


# Ramps: one second is a ramp too.


def test_a_ramp_of_one_second_starts_at_the_at_risk_pace() -> None:
    policy = make_policy(line={"at_risk_pace_factor": 0.5, "recovery_ramp_hours": 1 / 3600})

    assert ramp_factor(NOW, NOW, policy) == 0.5


# The binding cap: none when every cap has room; the first in order at a tie.


def test_no_cap_binds_when_every_cap_has_room() -> None:
    limits = Limits(5, 100, 5, 50, 10, 10)

    assert check(LineUsage(), limits, BOB, True, NOW) == Verdict(NOW, "", 0)


def test_at_a_tie_the_line_s_pace_is_named_before_the_recipient_s() -> None:
    usage = LineUsage()
    usage.record(BOB, ago(seconds=10), new_chat=False)

    verdict = check(usage, Limits(1, 100, 1, 50, 10, 10), BOB, False, NOW)

    assert (verdict.allowed_at, verdict.cap, verdict.limit) == (
        later(seconds=50),
        "sends_per_minute",
        1,
    )


@pytest.mark.parametrize(
    ("caps", "says"),
    [
        ({"sends_per_recipient_per_minute": 1}, "sends_per_recipient_per_minute=1"),
        ({"distinct_recipients_per_hour": 1}, "distinct_recipients_per_hour=1"),
    ],
)
def test_the_per_recipient_caps_name_themselves_and_their_value(
    caps: dict[str, int], says: str
) -> None:
    usage = LineUsage()
    other = CAROL if "distinct" in says else BOB
    usage.record(other, ago(seconds=10), new_chat=False)

    decision = decide(
        MessageFacts(BOB), ChatFacts(is_new=False), LineFacts(LINE), usage,
        make_policy(caps=caps), NOW,
    )  # fmt: skip

    assert decision.action is Action.THROTTLE
    assert says in decision.reason


def test_a_same_body_hold_through_the_gate_names_the_line() -> None:
    usage = LineUsage(by_body={"d": {CAROL: ago(minutes=59), DAVE: ago(minutes=1)}})
    message = MessageFacts(BOB, body_hash="d")

    decision = decide(message, ChatFacts(is_new=False), LineFacts(LINE), usage, CONTENT, NOW)

    assert decision.reason.startswith(f"line {LINE} sent a near-identical body")


# Holds: what they say, and when they are looked at again.


def test_waiting_for_a_line_is_looked_at_again_by_expires_at_at_the_latest() -> None:
    message = MessageFacts(BOB, expires_at=later(hours=1))

    decision = decide(message, ChatFacts(), None, LineUsage(), make_policy(), NOW)

    assert (decision.code, decision.reason, decision.not_before) == (
        Code.NO_LINE,
        "no line may take a new recipient now",
        later(hours=1),
    )


def test_a_critical_chat_hold_says_until_when() -> None:
    chat = ChatFacts(ChatHealth.CRITICAL, is_new=False)

    decision = decide(MessageFacts(BOB), chat, LineFacts(LINE), LineUsage(), make_policy(), NOW)

    assert (decision.code, decision.reason) == (
        Code.CHAT_CRITICAL,
        "the chat is CRITICAL: held until HEALTHY",
    )


def test_a_line_flagged_by_healthgate_sends_its_probe_from_the_moment_it_is_due() -> None:
    flagged = LineFacts(LINE, status=LineStatus.FLAGGED, probe_at=NOW)
    not_yet = LineFacts(LINE, status=LineStatus.FLAGGED, probe_at=later(seconds=1))
    chat = ChatFacts(is_new=False)

    due = decide(MessageFacts(BOB), chat, flagged, LineUsage(), make_policy(), NOW)
    early = decide(MessageFacts(BOB), chat, not_yet, LineUsage(), make_policy(), NOW)

    assert due.action is Action.SEND
    assert (early.action, early.code, early.not_before) == (
        Action.DEFER,
        Code.LINE_FLAGGED,
        later(seconds=1),
    )


# Text and files the store or the policy cannot take are bad input naming them.


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("hello\x00", "contains a NUL character"),
        ("half \ud800 a pair", "is not valid Unicode (surrogates not allowed)"),
    ],
)
def test_text_no_store_can_keep_is_bad_input_naming_it(value: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        storable_text(value, "body")

    assert (refused.value.field, refused.value.value, refused.value.problem) == (
        "body",
        value,
        problem,
    )
    assert storable_text("plain, and ünïcode", "body") == "plain, and ünïcode"


def test_a_policy_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "healthgate.toml"
    folder.mkdir()

    with pytest.raises(PolicyFileError) as refused:
        load_policy(folder)

    assert (refused.value.path, refused.value.key) == (str(folder), "")
    assert refused.value.problem.startswith("cannot be read (")


def test_a_policy_file_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "healthgate.toml"
    path.write_bytes('# café\n[[lines]]\nnumber = "+14155550100"\n'.encode())
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")

    assert load_policy(path).lines[0].number == "+14155550100"
    with pytest.raises(PolicyFileError) as refused:
        load_policy(bad)
    assert (refused.value.path, refused.value.key, refused.value.problem) == (
        str(bad),
        "",
        "is not UTF-8 text (byte 0xe9 at 5)",
    )


def test_the_gate_s_drops_and_expiries_say_why() -> None:
    policy, line = make_policy(), LineFacts(LINE)
    opted = ChatFacts(ChatHealth.OPTED_OUT)
    elsewhere = ChatFacts(recipient_opted_out=True)
    expired = MessageFacts(BOB, expires_at=ago(seconds=1))
    routed = MessageFacts(BOB, may_reroute=True)
    at_risk = LineFacts(LINE, reputation=LineReputation.AT_RISK)

    reasons = [
        decide(MessageFacts(BOB), opted, line, LineUsage(), policy, NOW).reason,
        decide(MessageFacts(BOB), elsewhere, line, LineUsage(), policy, NOW).reason,
        decide(expired, ChatFacts(), line, LineUsage(), policy, NOW).reason,
        decide(routed, ChatFacts(), at_risk, LineUsage(), policy, NOW).reason,
    ]

    assert reasons == [
        "the chat is OPTED_OUT",
        "the recipient opted out on another chat",
        f"expires_at {ago(seconds=1).isoformat()} passed",
        f"line {LINE} is AT_RISK: a new recipient goes to a HEALTHY line",
    ]


# What each refusal says, word for word: these messages are what a person reads.


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "OPTED_OUT",
            "line reputation 'OPTED_OUT' is not valid: opt-out applies to a recipient, "
            "not to a line (allowed: HEALTHY, AT_RISK, CRITICAL)",
        ),
        ("SICK", "line reputation 'SICK' is not one of HEALTHY, AT_RISK, CRITICAL"),
    ],
)
def test_a_line_reputation_that_is_none_says_which_are(value: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_field(parse_line_reputation, "status", value)

    assert (refused.value.field, refused.value.value, refused.value.problem) == (
        "status",
        value,
        message,
    )


def test_times_not_loaded_says_what_was_missing() -> None:
    with pytest.raises(TimesNotLoaded) as minute:
        LineUsage(recent_unloaded=3).minute_allowed(3, NOW)
    with pytest.raises(TimesNotLoaded) as day:
        LineUsage(day_count=3).day_allowed(3, NOW)

    assert str(minute.value) == (
        "3 events in the window reach the cap of 3 but 3 of their times were not loaded"
    )
    assert str(day.value) == "day_count reached the daily cap but the day's times were not loaded"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must be a phone number in E.164 form, e.g. +14155550123"),
        (14155550123, "must be a phone number in E.164 form, e.g. +14155550123"),
        ("4155550123", "must start with '+' and the country code (E.164)"),
        (
            "+xxxxx",
            "is not a phone number ((1) The string supplied did not seem to be a phone number.)",
        ),
        ("+1 000 555 0123", "is not a valid phone number for its country"),
    ],
)
def test_a_number_that_is_not_e164_is_named_with_its_field(value: object, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        to_e164(value, "to")

    assert (refused.value.field, refused.value.value, refused.value.problem) == (
        "to",
        value,
        problem,
    )


def test_a_policy_that_is_no_table_at_all_is_named_at_the_top_level() -> None:
    with pytest.raises(PolicyFileError) as refused:
        parse_policy([], "healthgate.toml")  # type: ignore[arg-type]

    assert (refused.value.path, refused.value.key) == ("healthgate.toml", "(top level)")


def test_the_same_report_again_supersedes_nothing_and_a_latch_never_moves_back() -> None:
    assert not supersedes("HEALTHY", NOW, "HEALTHY", NOW)
    assert latest(ago(minutes=5), NOW) == NOW
    assert latest(later(minutes=5), NOW) == later(minutes=5)
    assert latest(NOW, None) == NOW
