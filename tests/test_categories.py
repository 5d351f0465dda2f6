"""Categories through the store: enqueue checks, quiet hours held and let out, explain,
status and policy changes, on every backend with the clock frozen."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import select
from typer.testing import CliRunner

import scheduler
from policies.changes import Affected, affected, normalised, priorities
from policies.codes import Code
from policies.config import parse_policy
from policies.errors import IdempotencyConflict, InvalidInput
from scheduler import constants
from scheduler.cli import app as cli_app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store.models import Message
from tasks import intake
from tests.conftest import LINE_A, POLICY

Sends = Callable[[], list[dict[str, str]]]
NEW_YORK = "+12125550100"
LOS_ANGELES = "+13105550100"
HONOLULU = "+18085550100"
NOWHERE = "+80012345678"
#: 08:00 UTC on 22 November 2026: 03:00 in New York, midnight in Los Angeles, 22:00 the
#: day before in Honolulu: night for all three.
NIGHT = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
#: Marketing let out at its opening exactly, so the times below are exact.
EXACT = POLICY + "\n[categories.marketing]\nrelease_spread_minutes = 0\n"


@pytest.fixture
def policy_text() -> str:
    return EXACT


@pytest.fixture
def night() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(NIGHT) as frozen:
        yield frozen


@pytest.fixture
def hg(settings: Settings, night: FrozenDateTimeFactory) -> Iterator[Healthgate]:
    client = Healthgate(settings)
    client.sync_lines()
    yield client
    client.close()


def stored(hg: Healthgate) -> list[Message]:
    with hg.runtime.sessions() as session:
        return list(session.scalars(select(Message)))


def last(hg: Healthgate, message_id: str) -> dict[str, Any]:
    decision: dict[str, Any] = hg.explain(message_id)["decisions"][-1]
    return decision


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"category": "promo"}, "category", "it defines marketing, transactional"),
        ({"category": "Marketing"}, "category", "is not a category name"),
        ({"category": 3}, "category", "is not a category name"),
        ({"recipient_tz": "Mars/Olympus"}, "recipient_tz", "not a time zone"),
        ({"recipient_tz": ""}, "recipient_tz", "not a time zone"),
        ({"recipient_tz": 5}, "recipient_tz", "IANA time zone"),
        (
            {"to": NOWHERE, "category": "marketing"},
            "recipient_tz",
            "gives no time zone",
        ),
    ],
)
def test_a_bad_category_or_zone_is_refused_naming_the_field_and_stores_nothing(
    hg: Healthgate, fields: dict[str, Any], field: str, words: str
) -> None:
    good = {"to": NEW_YORK, "body": "hi"}

    with pytest.raises(InvalidInput) as error:
        hg.enqueue_many([good, {**good, **fields}])

    assert error.value.field == f"messages[1].{field}"
    assert words in str(error.value)
    assert stored(hg) == []


def test_a_number_with_no_zone_is_taken_with_an_explicit_one(hg: Healthgate) -> None:
    message_id = hg.enqueue(NOWHERE, "hi", category="marketing", recipient_tz="Europe/Paris")

    data = hg.explain(message_id)
    assert (data["category"], data["recipient_tz"]) == ("marketing", "Europe/Paris")
    assert data["sending_hours"]["time_zones"] == ["Europe/Paris"]


def test_a_repeat_with_another_category_is_a_conflict(hg: Healthgate) -> None:
    hg.enqueue(NEW_YORK, "hi", idempotency_key="k1", category="marketing")

    with pytest.raises(IdempotencyConflict) as error:
        hg.enqueue(NEW_YORK, "hi", idempotency_key="k1")

    assert error.value.field == "category"
    assert len(stored(hg)) == 1


def test_each_message_keeps_its_category_and_priority(hg: Healthgate) -> None:
    code = hg.enqueue(NEW_YORK, "code 123")
    promo = hg.enqueue(NEW_YORK, "20% off", category="marketing")

    by_id = {m.id: (m.category, m.priority) for m in stored(hg)}
    assert by_id == {code: ("transactional", 10), promo: ("marketing", 0)}


def test_a_campaign_enqueued_once_goes_at_8_am_in_each_recipients_zone(
    hg: Healthgate, sends: Sends, night: FrozenDateTimeFactory
) -> None:
    # Given one campaign to New York, Los Angeles and Honolulu, enqueued at 03:00 New York
    ids = hg.enqueue_many(
        [
            {"to": to, "body": "Sale", "category": "marketing"}
            for to in (NEW_YORK, LOS_ANGELES, HONOLULU)
        ]
    )
    code = hg.enqueue(HONOLULU, "Your code is 1234")

    # When it is dispatched: the passcode goes, the campaign is held on quiet hours
    hg.drain()
    assert [s["message_id"] for s in sends()] == [code]
    assert [last(hg, i)["code"] for i in ids] == ["quiet_hours"] * 3
    assert "held until 2026-11-22 08:00 America/Los_Angeles" in last(hg, ids[1])["reason"]
    # And status counts them under quiet_hours
    assert hg.status()["waiting"]["by_reason"] == {"quiet_hours": 3}

    # Then each goes when it is 08:00 where its recipient is, not before
    went: dict[str, datetime] = {}
    for hours in range(1, 13):
        night.move_to(NIGHT + timedelta(hours=hours))
        hg.drain()
        for send in sends():
            went.setdefault(send["message_id"], datetime.now(UTC))
    assert [went[i] for i in ids] == [
        datetime(2026, 11, 22, 13, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 16, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 18, 0, tzinfo=UTC),
    ]


def test_explain_shows_the_category_its_window_and_the_zone(hg: Healthgate) -> None:
    message_id = hg.enqueue(LOS_ANGELES, "Sale", category="marketing")
    hg.drain()

    data = hg.explain(message_id)

    assert (data["category"], data["priority"]) == ("marketing", 0)
    assert data["sending_hours"] == {
        "window": "08:00-21:00",
        "time_zones": ["America/Los_Angeles"],
        "line_hours": None,
    }
    assert data["decisions"][-1]["not_before"] == "2026-11-22T16:00:00+00:00"


def test_a_message_that_expires_in_the_night_is_never_sent(
    hg: Healthgate, sends: Sends, night: FrozenDateTimeFactory
) -> None:
    message_id = hg.enqueue(
        NEW_YORK, "Flash sale", category="marketing", expires_at=NIGHT + timedelta(hours=2)
    )

    hg.drain()
    night.move_to(NIGHT + timedelta(hours=2))
    hg.drain()
    night.move_to(NIGHT + timedelta(hours=10))
    hg.drain()

    assert hg.explain(message_id)["state"] == "expired"
    assert last(hg, message_id)["code"] == "expires_at"
    assert sends() == []


_mtime = iter(range(2_000_000_000, 10**19, 1_000_000_000))


def rewrite(path: Path, text: str) -> None:
    """Replace the policy file, a second newer than the last write."""
    path.write_text(text, encoding="utf-8")
    stamp = next(_mtime)
    os.utime(path, ns=(stamp, stamp))


def test_a_policy_change_moves_waiting_messages_to_the_new_window_and_priority(
    settings: Settings, night: FrozenDateTimeFactory, sends: Sends
) -> None:
    # Given a marketing message held for New York's morning
    rewrite(settings.policy_file, EXACT)
    hg = Healthgate(settings)
    message_id = hg.enqueue(NEW_YORK, "Sale", category="marketing")
    hg.drain()
    assert last(hg, message_id)["code"] == "quiet_hours"
    hg.close()

    # When the policy opens marketing at any hour and puts it first
    rewrite(
        settings.policy_file,
        POLICY + '\n[categories.marketing]\nwindow = "00:00-24:00"\npriority = 20\n',
    )
    hg = Healthgate(settings)
    try:
        hg.drain()

        # Then it is looked at again and sent now, and its priority is the new one
        assert hg.explain(message_id)["state"] == "sent"
        assert hg.explain(message_id)["priority"] == 20
        assert [s["message_id"] for s in sends()] == [message_id]
    finally:
        hg.close()


def test_the_cli_enqueues_with_a_category_and_a_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    runner = CliRunner()
    with freeze_time(NIGHT):
        assert runner.invoke(cli_app, ["init"]).exit_code == 0
        args = ["enqueue", "--to", NOWHERE, "--body", "Sale", "--category", "marketing"]
        refused = runner.invoke(cli_app, args)
        taken = runner.invoke(cli_app, [*args, "--recipient-tz", "America/Chicago"])
        assert taken.exit_code == 0, taken.output
        runner.invoke(cli_app, ["drain"])
        shown = runner.invoke(cli_app, ["explain", taken.output.strip()])

    assert refused.exit_code != 0
    assert "recipient_tz" in refused.output
    assert "marketing (priority 0): 08:00-21:00 recipient time, in America/Chicago" in shown.output
    assert "quiet_hours" in shown.output
    assert "held until 2026-11-22 08:00 America/Chicago" in shown.output


def test_the_broker_task_takes_a_category_and_refuses_a_bad_one(hg: Healthgate) -> None:
    # Given healthgate's enqueue task on an application's Celery app, called by name
    app = Celery("shop", broker="memory://", set_as_current=False)
    intake.register(app, lambda: hg.runtime, hg.runtime.settings)
    task = app.tasks[constants.ENQUEUE_MANY_TASK]

    # When a campaign comes with its category and zone, and then one with a bad category
    taken = task.apply(
        kwargs={
            "messages": [
                {
                    "to": NOWHERE,
                    "body": "Sale",
                    "category": "marketing",
                    "recipient_tz": "Asia/Tokyo",
                }
            ]
        }
    ).get()
    refused = task.apply(
        kwargs={"messages": [{"to": NEW_YORK, "body": "Sale", "category": "promotional"}]}
    ).get()

    # Then the first is stored as marketing in Tokyo, the second answered naming the field
    [message_id] = taken["ids"]
    assert (hg.explain(message_id)["category"], hg.explain(message_id)["recipient_tz"]) == (
        "marketing",
        "Asia/Tokyo",
    )
    assert refused["field"] == "category"
    assert "'promotional'" in refused["error"]
    assert len(stored(hg)) == 1


#: The README's campaign: marketing from 10 am to 8 pm on the recipient's clock.
TEN_AM = POLICY + '\n[categories.marketing]\nwindow = "10:00-20:00"\nrelease_spread_minutes = 0\n'


@pytest.mark.parametrize("policy_text", [TEN_AM])
def test_the_readmes_campaign_goes_at_10_am_local_in_each_zone(
    hg: Healthgate, sends: Sends, night: FrozenDateTimeFactory
) -> None:
    # Given the campaign enqueued once at 05:00 UTC on 1 April 2026 (01:00 in New York;
    # both the US and the UK are on summer time by then)
    enqueued = datetime(2026, 4, 1, 5, 0, tzinfo=UTC)
    night.move_to(enqueued)
    people = {
        "+12125550100": "New York",
        "+13125550100": "Chicago",
        "+13105550100": "Los Angeles",
        "+447911123456": "London",
    }
    ids = hg.enqueue_many(
        [{"to": to, "body": "Spring sale", "category": "marketing"} for to in people]
    )

    # When the worker runs every quarter of an hour through the day
    went: dict[str, datetime] = {}
    for quarter in range(4 * 14):
        night.move_to(enqueued + timedelta(minutes=15 * quarter))
        hg.drain()
        for send in sends():
            went.setdefault(send["message_id"], datetime.now(UTC))

    # Then each went at 10:00 on its recipient's clock
    assert {place: went[i].isoformat() for place, i in zip(people.values(), ids, strict=True)} == {
        "New York": "2026-04-01T14:00:00+00:00",
        "Chicago": "2026-04-01T15:00:00+00:00",
        "Los Angeles": "2026-04-01T17:00:00+00:00",
        "London": "2026-04-01T09:00:00+00:00",
    }


def normal(**data: Any) -> dict[str, Any]:
    return normalised(parse_policy({"lines": [{"number": LINE_A}], **data}, "p.toml"))


def test_a_window_change_governs_quiet_hours_and_a_lines_hours_change_that_line() -> None:
    old = normal()
    new = normal(
        categories={"marketing": {"window": "09:00-20:00"}},
        lines=[{"number": LINE_A, "window": "09:00-17:00", "timezone": "America/Chicago"}],
    )

    found = affected(old, new)

    assert Affected(frozenset({Code.QUIET_HOURS})) in found
    assert Affected(frozenset({Code.LINE_HOURS}), frozenset({LINE_A})) in found
    # A priority alone holds nothing: it is written to the waiting messages instead
    assert affected(old, normal(categories={"marketing": {"priority": 3}})) == []


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ({}, {"marketing": {"priority": 3}}, {"marketing": 3}),
        ({"alerts": {"priority": 50}}, {}, {"alerts": 0}),  # gone: marketing's priority
        (
            {"alerts": {"priority": 50}},
            {"marketing": {"priority": 2}},
            {"alerts": 2, "marketing": 2},
        ),
        ({}, {"alerts": {"priority": 50}}, {}),  # new: no message of it waits yet
        ({"marketing": {"window": "09:00-20:00"}}, {}, {}),
    ],
)
def test_a_priority_change_names_the_categories_whose_messages_change(
    before: dict[str, Any], after: dict[str, Any], changed: dict[str, int]
) -> None:
    assert priorities(normal(categories=before), normal(categories=after)) == changed


def test_the_module_level_enqueue_takes_a_category_and_a_zone(
    settings: Settings, night: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module's client is put back as it was after the test
    monkeypatch.setattr(scheduler, "_default", None)
    client = scheduler.configure(settings)
    try:
        message_id = scheduler.enqueue(
            NEW_YORK, "Sale", category="marketing", recipient_tz="Europe/Berlin"
        )
        data = client.explain(message_id)
    finally:
        client.close()

    assert (data["category"], data["recipient_tz"]) == ("marketing", "Europe/Berlin")
