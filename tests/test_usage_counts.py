"""A window read as a count only still counts: toward every cap and every reading.

The store reads a window's times only near its cap (``policies.usage.LineUsage``); far
from it, the window is a count. These tables hold that count to the same weight as
the times it stands for.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from policies.pace import Limits, headroom
from policies.usage import LineUsage, TimesNotLoaded

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BOB, CAROL, NEW = "+14155550123", "+14155550124", "+14155550199"
DIGEST = "d" * 32

Allowed = Callable[[LineUsage], datetime]

#: Each cap's check, with its count-only field and the field of its times.
CAPS: dict[str, tuple[Allowed, str]] = {
    "sends_per_minute": (lambda u: u.minute_allowed(3, NOW), "recent_unloaded"),
    "new_conversations_per_day": (lambda u: u.new_chats_allowed(3, NOW), "new_chats_unloaded"),
    "distinct_recipients_per_hour": (
        lambda u: u.distinct_recipients_allowed(NEW, 3, NOW),
        "recipients_unloaded",
    ),
}


@pytest.mark.parametrize("cap", sorted(CAPS))
@pytest.mark.parametrize("unloaded", [3, 2])
def test_a_cap_reached_partly_by_counts_is_never_passed_as_free(cap: str, unloaded: int) -> None:
    # Given a window at its cap of 3, `unloaded` of them known as a count only
    allowed, field = CAPS[cap]
    usage = LineUsage(**{field: unloaded})
    for seconds in range(3 - unloaded):
        usage.record(BOB, NOW - timedelta(seconds=10 + seconds), new_chat=True)

    # Then the cap cannot say when it frees up without the times, and never says "now"
    with pytest.raises(TimesNotLoaded):
        allowed(usage)


def test_the_daily_cap_reached_by_its_count_is_never_passed_as_free() -> None:
    with pytest.raises(TimesNotLoaded):
        LineUsage(day_count=3).day_allowed(3, NOW)


def test_a_body_spread_reached_partly_by_counts_is_never_passed_as_free() -> None:
    usage = LineUsage(
        by_body={DIGEST: {CAROL: NOW - timedelta(minutes=5)}}, bodies_unloaded={DIGEST: 1}
    )

    with pytest.raises(TimesNotLoaded):
        usage.body_allowed(DIGEST, BOB, 2, NOW)


def test_counts_below_a_cap_leave_room() -> None:
    usage = LineUsage(recent_unloaded=2, new_chats_unloaded=2, recipients_unloaded=2)

    assert usage.minute_allowed(3, NOW) == NOW
    assert usage.new_chats_allowed(3, NOW) == NOW
    assert usage.distinct_recipients_allowed(NEW, 3, NOW) == NOW


@pytest.mark.parametrize(
    ("reading", "field"),
    [
        (lambda u: u.sent_last_minute(NOW), "recent_unloaded"),
        (lambda u: u.new_chats_last_day(NOW), "new_chats_unloaded"),
        (lambda u: u.recipients_last_hour(NOW), "recipients_unloaded"),
    ],
    ids=["sent_last_minute", "new_chats_last_day", "recipients_last_hour"],
)
def test_a_reading_adds_the_count_to_the_times(
    reading: Callable[[LineUsage], int], field: str
) -> None:
    usage = LineUsage(**{field: 4})
    usage.record(BOB, NOW - timedelta(seconds=5), new_chat=True)

    assert reading(usage) == 5


def test_headroom_from_counts_is_the_headroom_from_the_same_sends() -> None:
    # Given 6 sends in the last minute to 6 recipients, each starting a conversation
    limits = Limits(
        sends_per_minute=10,
        sends_per_day=100,
        sends_per_recipient_per_minute=5,
        sends_per_recipient_per_day=20,
        distinct_recipients_per_hour=20,
        new_conversations_per_day=8,
    )
    recorded = LineUsage(day=[])
    for n in range(6):
        recorded.record(f"+1415555{n:04d}", NOW - timedelta(seconds=n + 1), new_chat=True)
    # When a loader reads them as counts only
    counted = LineUsage(recent_unloaded=6, day_count=6, new_chats_unloaded=6, recipients_unloaded=6)

    # Then the router sees the same room left: 2 of 8 new conversations
    assert headroom(counted, limits, NOW) == headroom(recorded, limits, NOW) == pytest.approx(0.25)
