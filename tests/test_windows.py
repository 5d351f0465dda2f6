"""Sending windows on the recipient's clock, as the pure gate decides them at frozen instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from policies.codes import Code
from policies.config import Policy, parse_policy
from policies.decision import Decision
from policies.errors import PolicyFileError
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.statuses import Action
from policies.usage import LineUsage
from policies.windows import (
    has_zone,
    intersection,
    number_zones_of,
    parse_window,
    spans,
    wall_instant,
    zone,
)

LINE = "+14155550100"
NEW_YORK = "+12125550100"
LOS_ANGELES = "+13105550100"
HONOLULU = "+18085550100"
#: An Australian mobile: its region runs from Indian/Cocos (+6:30) to Lord Howe (+11).
AUSTRALIA = "+61412345678"
#: A number with no zone of its own (an international freephone number).
NOWHERE = "+80012345678"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def make_policy(**sections: Any) -> Policy:
    """One line; marketing let out at its opening exactly unless a test spreads it."""
    categories = dict(sections.pop("categories", {}))
    categories["marketing"] = {"release_spread_minutes": 0, **categories.get("marketing", {})}
    lines = sections.pop("lines", [{"number": LINE}])
    return parse_policy({"lines": lines, "categories": categories, **sections}, "test.toml")


POLICY = make_policy()


def gate(
    to: str,
    now: datetime,
    *,
    category: str = "marketing",
    recipient_tz: str | None = None,
    expires_at: datetime | None = None,
    policy: Policy = POLICY,
) -> Decision:
    message = MessageFacts(to, expires_at=expires_at, category=category, recipient_tz=recipient_tz)
    return decide(message, ChatFacts(is_new=False), LineFacts(LINE), LineUsage(), policy, now)


# 12:00 UTC on 22 November 2026: 07:00 in New York, 04:00 in Los Angeles, 02:00 in Honolulu.
SAME_INSTANT = utc(2026, 11, 22, 12, 0)


@pytest.mark.parametrize(
    ("to", "opens", "zone_name"),
    [
        (NEW_YORK, utc(2026, 11, 22, 13, 0), "America/New_York"),
        (LOS_ANGELES, utc(2026, 11, 22, 16, 0), "America/Los_Angeles"),
        (HONOLULU, utc(2026, 11, 22, 18, 0), "Pacific/Honolulu"),
    ],
)
def test_one_instant_is_held_until_8_am_on_each_recipients_own_clock(
    to: str, opens: datetime, zone_name: str
) -> None:
    # When a marketing message is decided at one UTC instant for three recipients
    decision = gate(to, SAME_INSTANT)

    # Then each is held until 08:00 where that recipient is, the reason naming the zone
    assert (decision.action, decision.code) == (Action.THROTTLE, Code.QUIET_HOURS)
    assert decision.not_before == opens
    assert f"held until 2026-11-22 08:00 {zone_name}" in decision.reason


@pytest.mark.parametrize(
    ("to", "now", "action"),
    [
        # 08:00 in New York: the window has just opened.
        (NEW_YORK, utc(2026, 11, 22, 13, 0), Action.SEND),
        # 20:59 in New York: still open; 21:00: closed.
        (NEW_YORK, utc(2026, 11, 23, 1, 59), Action.SEND),
        (NEW_YORK, utc(2026, 11, 23, 2, 0), Action.THROTTLE),
        # 17:00 UTC: 09:00 in Los Angeles, 07:00 in Honolulu.
        (LOS_ANGELES, utc(2026, 11, 22, 17, 0), Action.SEND),
        (HONOLULU, utc(2026, 11, 22, 17, 0), Action.THROTTLE),
    ],
)
def test_the_window_opens_at_its_start_and_closes_at_its_end(
    to: str, now: datetime, action: Action
) -> None:
    assert gate(to, now).action is action


def test_a_transactional_message_goes_at_any_hour() -> None:
    # 02:00 in Honolulu
    decision = gate(HONOLULU, SAME_INSTANT, category="transactional")

    assert decision.action is Action.SEND


def test_on_the_spring_forward_night_the_window_opens_at_8_am_daylight_time() -> None:
    # Given 01:30 EST on 8 March 2026, half an hour before New York's clocks jump to 03:00
    now = utc(2026, 3, 8, 6, 30)

    decision = gate(NEW_YORK, now)

    # Then it is held until 08:00 EDT (12:00 UTC), not 08:00 at the night's old offset
    assert decision.not_before == utc(2026, 3, 8, 12, 0)
    assert "held until 2026-03-08 08:00 America/New_York" in decision.reason


def test_on_the_fall_back_night_the_window_opens_at_8_am_standard_time() -> None:
    # Given 01:30 EDT on 1 November 2026, the first of the night's two 01:30s
    now = utc(2026, 11, 1, 5, 30)

    decision = gate(NEW_YORK, now)

    # Then it is held until 08:00 EST (13:00 UTC), the hour the clocks gave back included
    assert decision.not_before == utc(2026, 11, 1, 13, 0)


def test_a_window_that_starts_in_the_skipped_hour_opens_when_the_clocks_land() -> None:
    # Given a window from 02:30, a time New York's clocks skip on 8 March 2026
    policy = make_policy(categories={"marketing": {"window": "02:30-05:00"}})

    decision = gate(NEW_YORK, utc(2026, 3, 8, 6, 0), policy=policy)  # 01:00 EST

    # Then it opens at 03:00 EDT, the first instant the clock reads 02:30 or later
    assert decision.not_before == utc(2026, 3, 8, 7, 0)
    assert gate(NEW_YORK, utc(2026, 3, 8, 7, 0), policy=policy).action is Action.SEND


def test_the_skipped_and_repeated_wall_times_map_to_the_zone_databases_instants() -> None:
    new_york = zone("America/New_York")
    # 02:30 does not exist on 8 March: the first instant after it is the jump (07:00 UTC)
    assert wall_instant(datetime(2026, 3, 8).date(), 150, new_york) == utc(2026, 3, 8, 7, 0)
    # 01:30 happens twice on 1 November: the first one counts (05:30 UTC, EDT)
    assert wall_instant(datetime(2026, 11, 1).date(), 90, new_york) == utc(2026, 11, 1, 5, 30)


def test_a_number_of_several_zones_gets_the_hours_that_hold_in_all_of_them() -> None:
    # Given an Australian mobile number, whose region spans eight zones
    zones = number_zones_of(AUSTRALIA)
    assert {"Australia/Perth", "Australia/Sydney", "Indian/Cocos"} <= set(zones)

    # When 22:00 UTC: 09:00 in Sydney but 04:30 on the Cocos Islands
    decision = gate(AUSTRALIA, utc(2026, 11, 22, 22, 0))

    # Then it waits for 08:00 in the zone that opens last, and says which one it is
    assert decision.code is Code.QUIET_HOURS
    assert decision.not_before == utc(2026, 11, 23, 1, 30)
    assert "held until 2026-11-23 08:00 Indian/Cocos" in decision.reason
    assert "every zone of the number" in decision.reason
    # And the common window closes when the first zone's does: 21:00 at Lord Howe (+11)
    assert gate(AUSTRALIA, utc(2026, 11, 23, 9, 59)).action is Action.SEND
    assert gate(AUSTRALIA, utc(2026, 11, 23, 10, 0)).action is Action.THROTTLE


def test_the_intersection_of_two_zones_windows_is_where_both_are_open() -> None:
    window = parse_window("08:00-21:00")
    since = utc(2026, 11, 22, 0, 0)
    new_york = spans(window, "America/New_York", since.date())
    honolulu = spans(window, "Pacific/Honolulu", since.date())

    common = intersection([new_york, honolulu])

    # 08:00 in Honolulu is 13:00 in New York; 21:00 in New York is 16:00 in Honolulu
    first = next(span for span in common if span.start >= since)
    assert (first.start, first.end) == (utc(2026, 11, 22, 18, 0), utc(2026, 11, 23, 2, 0))


def test_an_explicit_recipient_tz_wins_over_the_numbers_zone() -> None:
    # Given a New York number whose owner lives in London (13:00 there at 13:00 UTC)
    now = utc(2026, 11, 22, 13, 0)
    assert gate(NEW_YORK, now).action is Action.SEND  # 08:00 in New York

    # When the application says where the recipient is: 06:00 UTC is 06:00 in London
    early = gate(NEW_YORK, utc(2026, 11, 22, 6, 0), recipient_tz="Europe/London")
    late = gate(NEW_YORK, utc(2026, 11, 22, 20, 0), recipient_tz="Europe/London")

    # Then London's clock decides, not New York's (where it is 01:00 and 15:00)
    assert early.not_before == utc(2026, 11, 22, 8, 0)
    assert "Europe/London" in early.reason
    assert late.action is Action.SEND


def test_a_message_that_expires_during_quiet_hours_expires_and_is_never_sent() -> None:
    # Given a marketing message at 23:00 in New York that expires at 02:00 there
    now = utc(2026, 11, 23, 4, 0)
    expires_at = utc(2026, 11, 23, 7, 0)

    held = gate(NEW_YORK, now, expires_at=expires_at)

    # Then it is held no later than its expiry, and then it expires
    assert (held.action, held.code, held.not_before) == (
        Action.THROTTLE,
        Code.QUIET_HOURS,
        expires_at,
    )
    assert held.not_before is not None
    at_expiry = gate(NEW_YORK, held.not_before, expires_at=expires_at)
    assert (at_expiry.action, at_expiry.code) == (Action.EXPIRE, Code.EXPIRES_AT)


def test_a_number_with_no_known_zone_is_deferred_with_a_reason_that_asks_for_one() -> None:
    decision = gate(NOWHERE, SAME_INSTANT)

    assert (decision.action, decision.code) == (Action.DEFER, Code.QUIET_HOURS)
    assert "give recipient_tz" in decision.reason
    # The maximum hold bounds it (72 h by default)
    assert decision.not_before == SAME_INSTANT + timedelta(hours=72)
    # And a zone given explicitly lets it go by that zone's clock
    assert gate(NOWHERE, SAME_INSTANT, recipient_tz="Europe/Paris").action is Action.SEND


def test_the_release_at_the_opening_is_spread_over_the_categorys_spread() -> None:
    # Given marketing released over half an hour once the window opens
    policy = make_policy(categories={"marketing": {"release_spread_minutes": 30}})
    opens = utc(2026, 11, 22, 13, 0)
    recipients = [f"+1212555{n:04d}" for n in range(200)]

    turns = [gate(to, SAME_INSTANT, policy=policy).not_before for to in recipients]

    # Then each recipient has its own moment inside the first half hour, spread evenly
    assert all(turn is not None and opens <= turn < opens + timedelta(minutes=30) for turn in turns)
    minutes = {int((turn - opens).total_seconds() // 60) for turn in turns if turn}
    assert len(minutes) >= 25
    # And the same recipient always gets the same moment
    assert gate(recipients[0], SAME_INSTANT, policy=policy).not_before == turns[0]


def test_a_window_on_weekdays_only_waits_over_the_weekend() -> None:
    policy = make_policy(
        categories={
            "marketing": {"window": "09:00-17:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
        }
    )
    # Saturday 21 November 2026, 12:00 in New York
    decision = gate(NEW_YORK, utc(2026, 11, 21, 17, 0), policy=policy)

    assert decision.not_before == utc(2026, 11, 23, 14, 0)  # Monday 09:00 EST


def test_an_overnight_window_runs_past_midnight() -> None:
    policy = make_policy(categories={"night": {"window": "22:00-06:00"}})

    # 23:30 and 05:59 in New York are inside; 06:00 is not
    assert gate(NEW_YORK, utc(2026, 11, 23, 4, 30), category="night", policy=policy).action is (
        Action.SEND
    )
    assert gate(NEW_YORK, utc(2026, 11, 23, 10, 59), category="night", policy=policy).action is (
        Action.SEND
    )
    held = gate(NEW_YORK, utc(2026, 11, 23, 11, 0), category="night", policy=policy)
    assert held.not_before == utc(2026, 11, 24, 3, 0)


def test_a_line_with_business_hours_holds_every_category_outside_them() -> None:
    # Given a line that sends 09:00-17:00 New York time
    policy = make_policy(
        lines=[{"number": LINE, "window": "09:00-17:00", "timezone": "America/New_York"}]
    )

    # When a transactional message comes at 07:00 in New York
    decision = gate(LOS_ANGELES, SAME_INSTANT, category="transactional", policy=policy)

    # Then the line's hours hold it, with their own code and zone
    assert (decision.action, decision.code) == (Action.THROTTLE, Code.LINE_HOURS)
    assert decision.not_before == utc(2026, 11, 22, 14, 0)
    assert "held until 2026-11-22 09:00 America/New_York" in decision.reason


def test_a_marketing_message_waits_for_both_its_window_and_its_lines_hours() -> None:
    policy = make_policy(
        lines=[{"number": LINE, "window": "09:00-17:00", "timezone": "America/New_York"}]
    )

    # 12:00 UTC: 07:00 in New York (line closed), 04:00 in Los Angeles (recipient asleep)
    decision = gate(LOS_ANGELES, SAME_INSTANT, policy=policy)

    # Then it goes at 08:00 in Los Angeles, when the line (11:00 New York) is open too
    assert decision.code is Code.QUIET_HOURS
    assert decision.not_before == utc(2026, 11, 22, 16, 0)


def test_a_policy_may_define_a_category_and_keeps_the_defaults() -> None:
    policy = make_policy(categories={"alerts": {"priority": 50}, "marketing": {"priority": 1}})

    assert set(policy.categories) == {"alerts", "marketing", "transactional"}
    assert policy.categories["alerts"].window is None
    # A default category's table changes only the keys it gives
    assert policy.categories["marketing"].window == "08:00-21:00"
    assert policy.categories["marketing"].priority == 1
    assert policy.categories["transactional"].priority == 10


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        ({"categories": {"Promo": {}}}, "categories.Promo", "not a category name"),
        ({"categories": {"marketing": {"window": "8-21"}}}, "window", "HH:MM-HH:MM"),
        ({"categories": {"marketing": {"window": "08:00-25:00"}}}, "window", "past 23:59"),
        ({"categories": {"marketing": {"window": "08:00-08:00"}}}, "window", "same time"),
        ({"categories": {"marketing": {"days": ["monday"]}}}, "days", "not a day"),
        ({"categories": {"marketing": {"priority": 101}}}, "priority", "less than or equal"),
        (
            {"categories": {"marketing": {"window": "08:00-09:00", "release_spread_minutes": 60}}},
            "release_spread_minutes",
            "not shorter than the window",
        ),
        (
            {"lines": [{"number": LINE, "window": "09:00-17:00"}]},
            "timezone",
            "needs the time zone",
        ),
        (
            {"lines": [{"number": LINE, "window": "09:00-17:00", "timezone": "Mars/Olympus"}]},
            "timezone",
            "not a time zone",
        ),
    ],
)
def test_a_bad_category_or_window_is_refused_naming_the_key(
    data: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(PolicyFileError) as error:
        make_policy(**data)

    assert key in str(error.value)
    assert words in str(error.value)


def every_example_number() -> list[str]:
    """phonenumbers' example number of each type in each region: every kind of number."""
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.TOLL_FREE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                found.append(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            found.append(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    return found


def test_the_quick_zone_check_at_enqueue_agrees_with_the_gates_zones() -> None:
    numbers = every_example_number()
    assert len(numbers) > 500

    disagree = [n for n in numbers if has_zone(n) != bool(number_zones_of(n))]

    assert disagree == []
    assert not has_zone(NOWHERE)


def test_zones_that_open_together_are_named_by_the_numbers_own_country() -> None:
    # Given a British mobile: London, Guernsey, Jersey and the Isle of Man share a clock
    decision = gate("+447911123456", utc(2026, 4, 1, 5, 0))  # 06:00 BST

    # Then the reason names London, the zone of the number's own country
    assert "held until 2026-04-01 08:00 Europe/London" in decision.reason
    assert "every zone of the number (Europe/London, " in decision.reason
    assert decision.not_before == utc(2026, 4, 1, 7, 0)


def test_marketing_uses_its_share_of_a_cap_and_leaves_the_rest_to_transactional() -> None:
    # Given a line that sent 16 messages this minute, of its 20
    now = utc(2026, 11, 22, 18, 0)  # 10:00 in Los Angeles
    usage = LineUsage(recent=[now - timedelta(seconds=s) for s in range(16, 0, -1)], day_count=16)

    def decided(category: str) -> Decision:
        message = MessageFacts(LOS_ANGELES, category=category)
        return decide(message, ChatFacts(is_new=False), LineFacts(LINE), usage, POLICY, now)

    # Then a marketing message waits (four fifths of the cap are used), naming its share,
    marketing = decided("marketing")
    assert (marketing.action, marketing.code) == (Action.THROTTLE, Code.CAP_SENDS_PER_MINUTE)
    assert "sends_per_minute=16" in marketing.reason
    assert "marketing may use 80%" in marketing.reason
    # and a transactional one goes in the fifth kept for it
    assert decided("transactional").action is Action.SEND
