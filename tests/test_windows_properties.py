"""Property: no message of a windowed category is ever sent outside its recipient's window.

A message is followed through the gate from a random instant, each hold waited out to
its ``not_before``, until it is sent or expires; a small model written here (the
recipient's wall clock, read in every zone of the number) says whether the instant it
was sent at was inside the window. Numbers, clocks, windows, days, spreads and lines'
own hours are drawn at random.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as number_zones

from policies.config import Policy, parse_policy
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.statuses import Action
from policies.usage import LineUsage
from scheduler.client import Healthgate
from scheduler.providers.log import read_send_log
from scheduler.settings import Settings
from tests.conftest import examples

LINE = "+14155550100"
#: Area codes across the US zones, Alaska, Hawaii, Arizona (no DST), Puerto Rico, Guam.
AREA_CODES = ("212", "305", "312", "406", "415", "602", "808", "907", "787", "671", "800")
#: Mobiles of regions of one zone and of several.
OTHER_NUMBERS = (
    "+61412345678",
    "+5511987654321",
    "+447911123456",
    "+4915112345678",
    "+919812345678",
    "+819012345678",
    "+79161234567",
    "+525512345678",
    "+64211234567",
)
ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Pacific/Kiritimati",
)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

numbers = st.one_of(
    st.builds(
        lambda area, rest: f"+1{area}555{rest:04d}",
        st.sampled_from(AREA_CODES),
        st.integers(0, 9999),
    ),
    st.sampled_from(OTHER_NUMBERS),
)
# Whole years either side of the DST changes of both hemispheres.
clocks = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@st.composite
def windows(draw: st.DrawFn) -> dict[str, Any]:
    """A window of any length, overnight or not, some days, a spread inside it."""
    start = draw(st.integers(0, 24 * 60 - 1))
    end = draw(st.integers(1, 24 * 60).filter(lambda end: end != start))
    fields: dict[str, Any] = {
        "window": f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    }
    if draw(st.booleans()):
        fields["days"] = draw(st.lists(st.sampled_from(DAYS), min_size=1, unique=True))
    length = (end - start) % (24 * 60) or 24 * 60
    fields["release_spread_minutes"] = float(draw(st.integers(0, length - 1)))
    return fields


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    line: dict[str, Any] = {"number": LINE}
    if draw(st.booleans()):
        hours = draw(windows())
        line.update(
            window=hours["window"], days=hours.get("days"), timezone=draw(st.sampled_from(ZONES))
        )
        if line["days"] is None:
            del line["days"]
    data = {"lines": [line], "categories": {"marketing": draw(windows())}}
    return parse_policy(data, "random.toml")


def inside(fields: dict[str, Any], zone: str, at: datetime) -> bool:
    """The model: ``at`` is inside the window on ``zone``'s wall clock."""
    start_text, end_text = fields["window"].split("-")
    start = int(start_text[:2]) * 60 + int(start_text[3:])
    end = int(end_text[:2]) * 60 + int(end_text[3:])
    days = {DAYS.index(day) for day in fields.get("days") or DAYS}
    local = at.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    if start < end:
        return start <= minute < end and local.weekday() in days
    yesterday = (local - timedelta(days=1)).weekday()
    return (minute >= start and local.weekday() in days) or (minute < end and yesterday in days)


def length(fields: dict[str, Any]) -> int:
    """How many minutes the window is open a day."""
    start_text, end_text = fields["window"].split("-")
    start = int(start_text[:2]) * 60 + int(start_text[3:])
    end = int(end_text[:2]) * 60 + int(end_text[3:])
    return (end - start) % (24 * 60) or 24 * 60


def zones_of(number: str, recipient_tz: str | None) -> list[str]:
    """The model's zones: the one given, else every zone the number's prefix names."""
    if recipient_tz is not None:
        return [recipient_tz]
    names = number_zones.time_zones_for_number(phonenumbers.parse(number))
    return [name for name in names if name != "Etc/Unknown"]


def follow(message: MessageFacts, policy: Policy, start: datetime) -> tuple[Action, datetime]:
    """Decide, wait out each hold, decide again: the final action and its instant."""
    now = start
    for _ in range(40):
        decision = decide(
            message, ChatFacts(is_new=False), LineFacts(LINE), LineUsage(), policy, now
        )
        if decision.action in (Action.SEND, Action.EXPIRE):
            return decision.action, now
        assert decision.not_before is not None
        assert decision.not_before > now
        now = decision.not_before
    return Action.DEFER, now


@settings(max_examples=examples(200))
@given(
    number=numbers,
    recipient_tz=st.one_of(st.none(), st.sampled_from(ZONES)),
    start=clocks,
    policy=policies(),
    expires_in=st.one_of(st.none(), st.integers(1, 72 * 60)),
)
def test_no_marketing_message_is_ever_sent_outside_its_recipients_window(
    number: str,
    recipient_tz: str | None,
    start: datetime,
    policy: Policy,
    expires_in: int | None,
) -> None:
    expires_at = None if expires_in is None else start + timedelta(minutes=expires_in)
    message = MessageFacts(
        number, expires_at=expires_at, category="marketing", recipient_tz=recipient_tz
    )

    action, at = follow(message, policy, start)

    if action is Action.SEND:
        marketing = policy.categories["marketing"].model_dump(exclude_none=True)
        zones = zones_of(number, recipient_tz)
        assert zones, "a number with no zone is never sent by a window"
        assert all(inside(marketing, zone, at) for zone in zones), (number, at, zones)
        line = policy.lines[0]
        if line.window is not None:
            assert line.timezone is not None
            assert inside(line.model_dump(exclude_none=True), line.timezone, at)
    if action is Action.EXPIRE:
        assert expires_at is not None
        assert at == expires_at


@settings(max_examples=examples(100))
@given(
    zone=st.sampled_from(ZONES),
    start=clocks,
    policy=policies(),
)
def test_a_recipient_of_one_zone_is_sent_to_within_the_week(
    zone: str, start: datetime, policy: Policy
) -> None:
    # Given a recipient whose zone is known and a window with no line hours against it
    policy = policy.model_copy(
        update={"lines": (policy.lines[0].model_copy(update={"window": None}),)}
    )
    message = MessageFacts("+12125550100", category="marketing", recipient_tz=zone)

    action, at = follow(message, policy, start)

    # Then it is sent within the week the windows are looked for in
    assert action is Action.SEND
    assert at - start < timedelta(days=8)


# Two days of dispatches take a second or two an example: the timeout grows with them.
@pytest.mark.timeout(examples(10) * 12)
@settings(
    max_examples=examples(10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    recipients=st.lists(numbers, min_size=1, max_size=5, unique=True),
    start=clocks,
    window=windows(),
)
def test_through_the_store_no_marketing_message_is_sent_outside_its_window(
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    recipients: list[str],
    start: datetime,
    window: dict[str, Any],
) -> None:
    # Given a policy with a random marketing window, and a campaign enqueued at a random
    # instant to random numbers, dispatched every 20 minutes for two days
    # (each example its own store: clocks go back and forth between examples)
    folder = tmp_path_factory.mktemp("store")
    shutil.copy(sqlite_template, folder / "healthgate.db")
    policy = folder / "healthgate.toml"
    days = f"days = {window['days']!r}\n".replace("'", '"') if "days" in window else ""
    policy.write_text(
        f'[[lines]]\nnumber = "{LINE}"\nprovider = "log"\n\n[categories.marketing]\n'
        f'window = "{window["window"]}"\n{days}'
        f"release_spread_minutes = {window['release_spread_minutes']}\n"
    )
    settings_ = Settings(
        data_dir=folder / "data",
        policy_file=policy,
        database_url=f"sqlite:///{folder / 'healthgate.db'}",
        broker_url="memory://",
    )
    with freeze_time(start) as clock:
        hg = Healthgate(settings_)
        try:
            hg.sync_lines()
            ids = hg.enqueue_many(
                [{"to": to, "body": "Sale", "category": "marketing"} for to in recipients]
            )
            for _ in range(6 * 24 * 2):
                hg.drain()
                clock.tick(timedelta(minutes=20))
        finally:
            hg.close()

    # Then every send was inside the window on every clock of its recipient's number
    log = read_send_log(settings_.send_log_path)
    for send in log:
        at = datetime.fromisoformat(send["at"])
        zones = zones_of(send["recipient"], None)
        assert all(inside(window, zone, at) for zone in zones), (send, zones)
    # And a campaign to numbers of one zone each, open every day for long enough that
    # the 20-minute dispatches fall inside it, was all sent
    if (
        "days" not in window
        and length(window) >= 60
        and all(len(zones_of(to, None)) == 1 for to in recipients)
    ):
        assert sorted(send["message_id"] for send in log) == sorted(ids)
