"""healthgate's own estimate: each signal and threshold, the policy section, and the
rule that the estimate only ever adds severity (pure; time is passed in)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import EarlyWarningMode, Policy, parse_policy
from policies.early_warning import (
    LEVELS,
    ChatSignals,
    LineSignals,
    chat_status,
    estimate_chat,
    estimate_line,
    more_severe,
)
from policies.errors import PolicyFileError
from policies.gate import decide
from policies.statuses import Action, ChatHealth, LineReputation
from tests.conftest import LINE_A, START, examples
from tests.test_gate_properties import situations

NOW = START
HEALTHY, AT_RISK, CRITICAL = LineReputation


def policy(**early: Any) -> Policy:
    return parse_policy({"lines": [{"number": LINE_A}], "early_warning": early}, "test.toml")


DEFAULT = policy()
EW = DEFAULT.early_warning

# A line with enough chats for its rates to speak, and nothing past a threshold.
QUIET = LineSignals(
    chats=100,
    answerable=100,
    replied=30,
    new_chats=50,
    opted_out=0,
    unhealthy=0,
    new_conversations_day=10,
    new_conversations_cap=100,
    recipients_hour=10,
    recipients_cap=60,
    sends_hour=40,
    rejections_hour=0,
    same_body_hour=2,
    same_body_cap=20,
)


def line_status(**changed: Any) -> LineReputation:
    return estimate_line(replace(QUIET, **changed), DEFAULT, NOW).status


def test_a_quiet_line_is_healthy_with_no_reasons() -> None:
    estimate = estimate_line(QUIET, DEFAULT, NOW)
    assert (estimate.status, estimate.reasons) == (HEALTHY, ())


@pytest.mark.parametrize(
    ("changed", "status"),
    [
        # Reply rate: AT_RISK below 5 % (by default low engagement never pauses a line).
        ({"replied": 5}, HEALTHY),
        ({"replied": 4}, AT_RISK),
        ({"replied": 0}, AT_RISK),
        # Opt-outs per new conversation: 3 % AT_RISK, 8 % CRITICAL.
        ({"opted_out": 1}, HEALTHY),
        ({"opted_out": 2}, AT_RISK),
        ({"opted_out": 4}, CRITICAL),
        # Chats the provider holds AT_RISK or CRITICAL: 25 % and 50 %.
        ({"unhealthy": 24}, HEALTHY),
        ({"unhealthy": 25}, AT_RISK),
        ({"unhealthy": 50}, CRITICAL),
        # The caps: 90 % of a cap used is AT_RISK.
        ({"new_conversations_day": 89}, HEALTHY),
        ({"new_conversations_day": 90}, AT_RISK),
        ({"recipients_hour": 53}, HEALTHY),
        ({"recipients_hour": 54}, AT_RISK),
        # Refusals per hundred sends: 3 and 10.
        ({"rejections_hour": 1}, HEALTHY),
        ({"rejections_hour": 2}, AT_RISK),
        ({"rejections_hour": 4}, CRITICAL),
        # Recipients of one body: off by default (the content rule holds it at its cap).
        ({"same_body_hour": 20}, HEALTHY),
    ],
)
def test_each_line_signal_turns_the_estimate_at_its_threshold(
    changed: dict[str, int], status: LineReputation
) -> None:
    assert line_status(**changed) is status


@pytest.mark.parametrize(
    "changed",
    [
        # Too few chats for a rate to speak: nothing, however bad the rate.
        {"chats": 19, "answerable": 19, "replied": 0, "unhealthy": 19},
        {"new_chats": 19, "opted_out": 19},
        {"sends_hour": 19, "rejections_hour": 19},
        # No caps known: the caps' signals are silent.
        {"new_conversations_cap": 0, "recipients_cap": 0, "same_body_cap": 0},
    ],
)
def test_a_rate_on_too_small_a_sample_says_nothing(changed: dict[str, int]) -> None:
    assert line_status(**changed) is HEALTHY


def test_recipients_of_one_body_count_once_turned_on() -> None:
    on = policy(same_body_use_at_risk=0.9)
    assert estimate_line(replace(QUIET, same_body_hour=17), on, NOW).status is HEALTHY
    assert estimate_line(replace(QUIET, same_body_hour=18), on, NOW).status is AT_RISK


def test_a_reason_names_the_signal_its_value_threshold_and_window() -> None:
    estimate = estimate_line(replace(QUIET, opted_out=4, replied=0), DEFAULT, NOW)

    assert estimate.status is CRITICAL
    assert estimate.why() == (
        "opt-outs per new conversation 0.08 >= 0.08 over 24 h; reply rate 0 < 0.05 over 24 h"
    )
    (worst,) = [r for r in estimate.reasons if r.status is CRITICAL]
    assert (worst.signal, worst.value, worst.threshold, worst.window) == (
        "opt-outs per new conversation",
        0.08,
        0.08,
        "24 h",
    )


def test_thresholds_come_from_the_policy() -> None:
    strict = policy(line_reply_rate_at_risk=0.5, min_chats=200)
    assert estimate_line(QUIET, strict, NOW).status is HEALTHY  # 100 chats < 200
    strict = policy(line_reply_rate_at_risk=0.5)
    assert estimate_line(QUIET, strict, NOW).status is AT_RISK  # 30 % < 50 %


def test_the_line_recovers_when_its_signals_do() -> None:
    bad = replace(QUIET, rejections_hour=10)
    assert estimate_line(bad, DEFAULT, NOW).status is CRITICAL
    # An hour later the refusals have left the window: nothing carries over.
    later = replace(bad, rejections_hour=0)
    assert estimate_line(later, DEFAULT, NOW + timedelta(hours=1)).status is HEALTHY


@pytest.mark.parametrize(
    ("signals", "status"),
    [
        (ChatSignals(unanswered=2, sends=2, replies=1, last_reply_at=NOW), HEALTHY),
        (ChatSignals(unanswered=3, sends=3, replies=1, last_reply_at=NOW), AT_RISK),
        (ChatSignals(unanswered=6, sends=6, replies=1, last_reply_at=NOW), CRITICAL),
        # Silence: 72 h since the last reply with a send unanswered.
        (
            ChatSignals(unanswered=1, sends=1, replies=1, last_reply_at=NOW - timedelta(hours=71)),
            HEALTHY,
        ),
        (
            ChatSignals(unanswered=1, sends=1, replies=1, last_reply_at=NOW - timedelta(hours=72)),
            AT_RISK,
        ),
        # Never replied: counted from the chat's first send.
        (ChatSignals(unanswered=1, sends=1, first_sent_at=NOW - timedelta(hours=80)), AT_RISK),
        # All answered: silence alone is no signal.
        (
            ChatSignals(unanswered=0, sends=1, replies=1, last_reply_at=NOW - timedelta(days=5)),
            HEALTHY,
        ),
        # Reply rate under 10 % once the chat has 5 sends.
        (ChatSignals(unanswered=0, sends=11, replies=1, last_reply_at=NOW), AT_RISK),
        (ChatSignals(unanswered=0, sends=10, replies=1, last_reply_at=NOW), HEALTHY),
        (ChatSignals(unanswered=0, sends=4, replies=0, last_reply_at=NOW), HEALTHY),
    ],
)
def test_each_chat_signal_turns_the_estimate_at_its_threshold(
    signals: ChatSignals, status: LineReputation
) -> None:
    assert estimate_chat(signals, EW, NOW).status is status


def test_a_chat_recovers_when_the_recipient_replies() -> None:
    silent = ChatSignals(unanswered=4, sends=4, first_sent_at=NOW - timedelta(hours=3))
    assert estimate_chat(silent, EW, NOW).status is AT_RISK
    replied = replace(silent, unanswered=0, replies=1, last_reply_at=NOW)
    assert estimate_chat(replied, EW, NOW).status is HEALTHY


def test_the_section_defaults_to_off() -> None:
    assert EW.mode is EarlyWarningMode.OFF
    assert policy(mode="shadow").early_warning.mode is EarlyWarningMode.SHADOW


@pytest.mark.parametrize(
    ("early", "message"),
    [
        (
            {"mode": "loud"},
            "test.toml: early_warning.mode: Input should be 'off', 'shadow' or 'enforce' "
            "(got 'loud')",
        ),
        (
            {"line_reply_rate_at_risk": 1.5},
            "test.toml: early_warning.line_reply_rate_at_risk: Input should be less than or "
            "equal to 1 (got 1.5)",
        ),
        (
            {"opt_out_rate_at_risk": 0.1, "opt_out_rate_critical": 0.05},
            "test.toml: early_warning.opt_out_rate_critical: is below opt_out_rate_at_risk "
            "(0.1): CRITICAL must be as bad as AT_RISK or worse (got 0.05)",
        ),
        (
            {"line_reply_rate_at_risk": 0.05, "line_reply_rate_critical": 0.1},
            "test.toml: early_warning.line_reply_rate_critical: is above "
            "line_reply_rate_at_risk (0.05): CRITICAL must be as bad as AT_RISK or worse "
            "(got 0.1)",
        ),
        ({"chat_unanswered_at_risk": 0}, None),
        ({"min_chats": "20"}, None),
        ({"windw_hours": 24}, "test.toml: early_warning.windw_hours: unknown key"),
    ],
)
def test_a_bad_threshold_is_refused_naming_the_key_and_value(
    early: dict[str, Any], message: str | None
) -> None:
    with pytest.raises(PolicyFileError) as error:
        policy(**early)
    key = next(iter(early))
    assert f"early_warning.{key}" in str(error.value) or (
        key.endswith("_at_risk") and "_critical" in str(error.value)
    )
    if message is not None:
        assert str(error.value) == message


statuses = st.sampled_from(LEVELS)


@given(provider=st.sampled_from(ChatHealth), estimate=statuses)
def test_the_combined_chat_status_is_the_worse_and_keeps_an_opt_out(
    provider: ChatHealth, estimate: LineReputation
) -> None:
    # The model: OPTED_OUT stays; otherwise the later in HEALTHY < AT_RISK < CRITICAL.
    order = [s.value for s in LEVELS]
    if provider is ChatHealth.OPTED_OUT:
        expected = "OPTED_OUT"
    else:
        expected = order[max(order.index(provider.value), order.index(estimate.value))]
    assert chat_status(provider, estimate).value == expected


@given(provider=statuses, estimate=statuses)
def test_the_combined_line_status_never_lowers_the_provider(
    provider: LineReputation, estimate: LineReputation
) -> None:
    combined = more_severe(provider, estimate)
    assert LEVELS.index(combined) == max(LEVELS.index(provider), LEVELS.index(estimate))
    if provider is CRITICAL:
        assert combined is CRITICAL


@settings(max_examples=examples(200))
@given(case=situations(), line_estimate=statuses, chat_estimate=statuses)
def test_enforce_never_sends_what_the_provider_alone_would_hold(
    case: dict[str, Any], line_estimate: LineReputation, chat_estimate: LineReputation
) -> None:
    # Given any facts, and any estimate of the line and the chat
    provider_only = decide(**case)
    raised = dict(case)
    raised["chat"] = replace(case["chat"], health=chat_status(case["chat"].health, chat_estimate))
    if case["line"] is not None:
        raised["line"] = replace(
            case["line"], reputation=more_severe(case["line"].reputation, line_estimate)
        )

    # When the gate sees the more severe status
    enforced = decide(**raised)

    # Then it sends only what the provider's status alone sends, drops what it drops,
    # and an estimate that adds nothing changes nothing
    if enforced.action is Action.SEND:
        assert provider_only.action is Action.SEND
    if provider_only.action in (Action.DROP, Action.EXPIRE):
        assert enforced == provider_only
    if raised == case:
        assert enforced == provider_only
