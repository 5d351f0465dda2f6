"""Polling the providers for line health: pure mappings, then one poll pass on every store."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory

from policies.errors import InvalidInput
from policies.provider_health import CanSend, d360_health, linq_line
from policies.statuses import LineReputation, LineStatus
from scheduler import constants
from scheduler.client import Healthgate
from scheduler.settings import Settings
from tasks.application import create_app
from tests.conftest import LINE_A, LINE_B, START
from tests.fakes import (
    D360_KEY,
    PROVIDER_POLICY,
    FakeProvider,
    answer,
)

LINE_C = "+14155550102"
BOB = "+14155550123"
POLICY = PROVIDER_POLICY + f'\n[[lines]]\nnumber = "{LINE_C}"\nprovider = "linq"\n'


def entity(kind: str, can_send: str, **extra: Any) -> dict[str, Any]:
    return {"entity_type": kind, "id": f"id-{kind.lower()}", "can_send_message": can_send, **extra}


def health(*entities: dict[str, Any], overall: str = "AVAILABLE") -> dict[str, Any]:
    return {"health_status": {"can_send_message": overall, "entities": list(entities)}, "id": "n"}


TEMPLATE_ERROR = {
    "error_code": 141002,
    "error_description": "Message templates can only be sent out if they are approved.",
    "possible_solution": "Edit or appeal the message template review decision.",
}
DISPLAY_NAME = ["Your display name has not been approved yet."]


# 360dialog: the pure mapping


@pytest.mark.parametrize(
    ("payload", "can_send", "reputation"),
    [
        (
            health(entity("PHONE_NUMBER", "AVAILABLE"), entity("WABA", "AVAILABLE")),
            "AVAILABLE",
            "HEALTHY",
        ),
        (
            health(entity("PHONE_NUMBER", "LIMITED"), entity("WABA", "AVAILABLE")),
            "LIMITED",
            "AT_RISK",
        ),
        # A template awaiting approval governs templates: the line sends plain text.
        (
            health(entity("PHONE_NUMBER", "LIMITED"), entity("MESSAGE_TEMPLATE", "BLOCKED")),
            "LIMITED",
            "AT_RISK",
        ),
        (health(entity("BUSINESS", "BLOCKED"), entity("APP", "AVAILABLE")), "BLOCKED", "CRITICAL"),
        # The worst entity wins even when the summary says otherwise.
        (health(entity("APP", "LIMITED"), overall="AVAILABLE"), "LIMITED", "AT_RISK"),
        # And the summary counts when it is worse than every entity.
        (health(entity("PHONE_NUMBER", "AVAILABLE"), overall="BLOCKED"), "BLOCKED", "CRITICAL"),
        # Worst by severity, not by name: BLOCKED over LIMITED.
        (health(entity("WABA", "BLOCKED"), entity("APP", "LIMITED")), "BLOCKED", "CRITICAL"),
        # Only a template entity and no summary: nothing holds the line back.
        (
            {"health_status": {"entities": [entity("MESSAGE_TEMPLATE", "BLOCKED")]}},
            "AVAILABLE",
            "HEALTHY",
        ),
        # No entities: the summary is all there is.
        (health(overall="BLOCKED"), "BLOCKED", "CRITICAL"),
    ],
)
def test_d360_overall_is_the_worst_entity(
    payload: dict[str, Any], can_send: str, reputation: str
) -> None:
    reading = d360_health(payload)

    assert (reading.can_send, reading.reputation) == (CanSend(can_send), LineReputation(reputation))


def test_d360_detail_keeps_additional_info_and_errors_per_entity() -> None:
    payload = health(
        entity("PHONE_NUMBER", "LIMITED", additional_info=DISPLAY_NAME),
        entity("MESSAGE_TEMPLATE", "BLOCKED", errors=[TEMPLATE_ERROR]),
    )

    detail = d360_health(payload).detail

    assert detail == {
        "source": "360dialog",
        "can_send_message": "LIMITED",
        "entities": [
            {
                "entity_type": "PHONE_NUMBER",
                "id": "id-phone_number",
                "can_send_message": "LIMITED",
                "governs_line": True,
                "additional_info": DISPLAY_NAME,
            },
            {
                "entity_type": "MESSAGE_TEMPLATE",
                "id": "id-message_template",
                "can_send_message": "BLOCKED",
                "governs_line": False,
                "errors": [TEMPLATE_ERROR],
            },
        ],
    }


@pytest.mark.parametrize(
    ("payload", "field", "value", "problem"),
    [
        (
            health(entity("WABA", "DOWN")),
            "health_status.entities[0].can_send_message",
            "DOWN",
            "is not one of AVAILABLE, LIMITED, BLOCKED",
        ),
        (
            health(entity("WABA", "AVAILABLE"), {"entity_type": "APP"}),
            "health_status.entities[1].can_send_message",
            None,
            "is not one of AVAILABLE, LIMITED, BLOCKED",
        ),
        (
            health(overall="MAYBE"),
            "health_status.can_send_message",
            "MAYBE",
            "is not one of AVAILABLE, LIMITED, BLOCKED",
        ),
        ({"error": "nope"}, "health_status", None, "is not an object"),
        ({"health_status": "fine"}, "health_status", "fine", "is not an object"),
        (
            {"health_status": {"can_send_message": "AVAILABLE", "entities": "all"}},
            "health_status.entities",
            "all",
            "is not a list",
        ),
        (
            {"health_status": {"can_send_message": "AVAILABLE", "entities": ["WABA"]}},
            "health_status.entities[0]",
            "WABA",
            "is not an object",
        ),
        (
            health(entity("WABA", "BLOCKED", errors="none")),
            "health_status.entities[0].errors",
            "none",
            "is not a list",
        ),
        # Neither a summary nor an entity: nothing says whether the number can send.
        (
            {"health_status": {"entities": []}},
            "health_status.can_send_message",
            None,
            "is not one of AVAILABLE, LIMITED, BLOCKED",
        ),
    ],
)
def test_d360_unknown_value_is_bad_input_naming_the_field(
    payload: dict[str, Any], field: str, value: object, problem: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        d360_health(payload)

    assert (caught.value.field, caught.value.value, caught.value.problem) == (field, value, problem)


def test_d360_an_entity_without_type_or_id_is_kept_with_empty_ones() -> None:
    reading = d360_health(health({"can_send_message": "LIMITED"}))

    assert reading.detail["entities"] == [
        {"entity_type": "", "id": "", "can_send_message": "LIMITED", "governs_line": True}
    ]


# Linq: the pure mapping


def phone(number: str, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": f"pn-{number}", "phone_number": number}
    for name in ("reputation", "health_status"):
        if name in fields:
            entry[name] = {"status": fields.pop(name), "doc_url": "https://docs.example/x"}
    return entry | fields


@pytest.mark.parametrize(
    ("entry", "reputation", "status"),
    [
        (phone(LINE_A, reputation="AT_RISK"), "AT_RISK", None),
        (phone(LINE_A, health_status="CRITICAL"), "CRITICAL", None),
        (phone(LINE_A, reputation="HEALTHY", health_status="CRITICAL"), "HEALTHY", None),
        (phone(LINE_A, reputation="HEALTHY", status="FLAGGED"), "HEALTHY", "FLAGGED"),
        (
            {"phone_number": LINE_A, "reputation": "AT_RISK", "status": "ACTIVE"},
            "AT_RISK",
            "ACTIVE",
        ),
        (phone(LINE_A, status={"status": "FLAGGED"}), None, "FLAGGED"),
        (phone(LINE_A), None, None),
    ],
)
def test_linq_entry_reads_reputation_alias_and_status(
    entry: dict[str, Any], reputation: str | None, status: str | None
) -> None:
    reading = linq_line(entry)

    assert reading.reputation == (LineReputation(reputation) if reputation else None)
    assert reading.status == (LineStatus(status) if status else None)


@pytest.mark.parametrize(
    ("entry", "field", "value"),
    [
        (phone(LINE_A, reputation="OPTED_OUT"), "reputation.status", "OPTED_OUT"),
        (phone(LINE_A, reputation="EXCELLENT"), "reputation.status", "EXCELLENT"),
        (phone(LINE_A, health_status="UNKNOWN"), "health_status.status", "UNKNOWN"),
        (phone(LINE_A, reputation="HEALTHY", status="OPTED_OUT"), "status", "OPTED_OUT"),
    ],
)
def test_linq_unknown_value_is_bad_input_naming_the_field(
    entry: dict[str, Any], field: str, value: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        linq_line(entry)

    assert (caught.value.field, caught.value.value) == (field, value)


# One poll pass, on every store


@pytest.fixture
def policy_text() -> str:
    return POLICY


@pytest.fixture
def hg(provider_client: Healthgate) -> Healthgate:
    return provider_client


def line(hg: Healthgate, number: str) -> dict[str, Any]:
    found: dict[str, Any] = next(x for x in hg.status()["lines"] if x["number"] == number)
    return found


def state(hg: Healthgate, message_id: str) -> str:
    return str(hg.explain(message_id)["state"])


def listed(*entries: dict[str, Any]) -> Any:
    return answer(200, {"phone_numbers": list(entries)})


def available() -> Any:
    return answer(200, health(entity("PHONE_NUMBER", "AVAILABLE"), entity("WABA", "AVAILABLE")))


def test_linq_poll_applies_reputation_and_the_deprecated_alias(
    hg: Healthgate, linq: FakeProvider, d360: FakeProvider
) -> None:
    linq.then(listed(phone(LINE_A, reputation="AT_RISK"), phone(LINE_C, health_status="CRITICAL")))
    d360.then(available())

    report = hg.poll()

    assert (line(hg, LINE_A)["reputation"], line(hg, LINE_C)["reputation"]) == (
        "AT_RISK",
        "CRITICAL",
    )
    assert line(hg, LINE_A)["reputation_updated_at"] == START.isoformat()
    assert [(r.method, r.url.path) for r in linq.requests] == [("GET", "/v3/phone_numbers")]
    assert report.errors == []


def test_linq_poll_prefers_reputation_over_the_alias(hg: Healthgate, linq: FakeProvider) -> None:
    linq.then(listed(phone(LINE_A, reputation="AT_RISK", health_status="CRITICAL")))

    hg.poll()

    assert line(hg, LINE_A)["reputation"] == "AT_RISK"


def test_linq_poll_flagged_line_holds_its_messages_until_active(
    hg: Healthgate, linq: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    linq.then(listed(phone(LINE_A, reputation="HEALTHY", status="FLAGGED")))
    hg.poll()
    message_id = hg.enqueue(to=BOB, body="wait", line=LINE_A)
    hg.drain()
    assert state(hg, message_id) == "deferred"

    clock.tick(timedelta(minutes=5))
    linq.then(listed(phone(LINE_A, reputation="HEALTHY", status="ACTIVE")))
    hg.poll()
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert [r.url.path for r in linq.requests] == ["/v3/phone_numbers"] * 2 + ["/v3/chats"]


@pytest.mark.parametrize(
    ("bad", "field", "value"),
    [
        (phone(LINE_A, reputation="OPTED_OUT"), "reputation.status", "OPTED_OUT"),
        (phone(LINE_A, reputation="EXCELLENT"), "reputation.status", "EXCELLENT"),
        (phone(LINE_A, reputation="HEALTHY", status="OPTED_OUT"), "status", "OPTED_OUT"),
    ],
)
def test_linq_poll_bad_value_is_logged_and_left_unchanged_while_others_apply(
    hg: Healthgate,
    linq: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    bad: dict[str, Any],
    field: str,
    value: str,
) -> None:
    hg.set_line_health(LINE_A, "AT_RISK")
    before = line(hg, LINE_A)
    linq.then(listed(bad, phone(LINE_C, reputation="CRITICAL")))

    with caplog.at_level(logging.ERROR):
        report = hg.poll()

    assert line(hg, LINE_A) == before
    assert line(hg, LINE_C)["reputation"] == "CRITICAL"
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert LINE_A in message
    assert field in message
    assert repr(value) in message
    assert len(report.errors) == 1


def test_poll_never_overwrites_a_newer_stamp(hg: Healthgate, linq: FakeProvider) -> None:
    hg.set_line_health(LINE_A, "HEALTHY", updated_at=START + timedelta(minutes=1))
    linq.then(listed(phone(LINE_A, reputation="CRITICAL")))

    hg.poll()

    assert line(hg, LINE_A)["reputation"] == "HEALTHY"
    assert line(hg, LINE_A)["reputation_updated_at"] == (START + timedelta(minutes=1)).isoformat()


def test_an_older_critical_still_pauses_a_line_whose_newer_report_is_at_risk(
    hg: Healthgate, linq: FakeProvider
) -> None:
    # CRITICAL pauses until a later HEALTHY: an AT_RISK after it does not end the pause,
    # whichever of the two arrived first.
    hg.set_line_health(LINE_A, "AT_RISK", updated_at=START + timedelta(minutes=1))
    linq.then(listed(phone(LINE_A, reputation="CRITICAL")))

    hg.poll()

    assert line(hg, LINE_A)["reputation"] == "CRITICAL"
    assert line(hg, LINE_A)["reputation_updated_at"] == (START + timedelta(minutes=1)).isoformat()


def test_linq_unavailable_changes_nothing(hg: Healthgate, linq: FakeProvider) -> None:
    linq.then(answer(503))
    before = line(hg, LINE_A)

    report = hg.poll()

    assert line(hg, LINE_A) == before
    assert "phone_numbers" in report.errors[0]


def test_d360_poll_sends_the_line_key_and_keeps_the_reasons(
    hg: Healthgate, d360: FakeProvider
) -> None:
    d360.then(
        answer(
            200,
            health(
                entity("PHONE_NUMBER", "LIMITED", additional_info=DISPLAY_NAME),
                entity("WABA", "AVAILABLE"),
            ),
        )
    )

    hg.poll()

    (request,) = d360.requests
    assert (request.url.path, request.headers["D360-API-KEY"]) == ("/health_status", D360_KEY)
    shown = line(hg, LINE_B)
    assert shown["reputation"] == "AT_RISK"
    assert shown["detail"]["entities"][0]["additional_info"] == DISPLAY_NAME


def test_d360_blocked_pauses_the_line_and_available_releases_its_messages(
    hg: Healthgate, d360: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    d360.then(answer(200, health(entity("WABA", "BLOCKED", errors=[TEMPLATE_ERROR]))))
    hg.poll()
    message_id = hg.enqueue(to=BOB, body="hold", line=LINE_B)
    hg.drain()
    assert state(hg, message_id) == "deferred"
    held = hg.explain(message_id)["line_health"]
    assert held["reputation"] == "CRITICAL"
    assert held["detail"]["entities"][0]["errors"] == [TEMPLATE_ERROR]

    clock.tick(timedelta(minutes=5))
    d360.then(available())
    hg.poll()
    hg.drain()

    assert state(hg, message_id) == "sent"
    assert line(hg, LINE_B)["reputation_updated_at"] == (START + timedelta(minutes=5)).isoformat()
    assert [r.url.path for r in d360.requests] == ["/health_status"] * 2 + ["/messages"]


def test_d360_available_answer_lifts_the_flag_of_a_refused_send(
    hg: Healthgate, d360: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    d360.then(answer(400, {"error": {"code": 131048}}))
    message_id = hg.enqueue(to=BOB, body="promo", line=LINE_B)
    hg.drain()
    assert line(hg, LINE_B)["status"] == "FLAGGED"

    clock.tick(timedelta(minutes=5))
    d360.then(available())
    hg.poll()
    hg.drain()

    assert line(hg, LINE_B)["status"] == "ACTIVE"
    assert state(hg, message_id) == "sent"


def test_d360_unchanged_answer_keeps_the_first_stamp(
    hg: Healthgate, d360: FakeProvider, clock: FrozenDateTimeFactory
) -> None:
    d360.then(available())
    hg.poll()
    clock.tick(timedelta(minutes=5))
    d360.then(available())

    report = hg.poll()

    assert line(hg, LINE_B)["reputation_updated_at"] == START.isoformat()
    assert report.counts["unchanged"] == 1


def test_d360_bad_answer_is_logged_and_left_unchanged(
    hg: Healthgate, d360: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    d360.then(answer(200, health(entity("WABA", "SOMETIMES"))))

    with caplog.at_level(logging.ERROR):
        report = hg.poll()

    assert line(hg, LINE_B)["detail"] is None
    assert "SOMETIMES" in report.errors[0]
    assert LINE_B in report.errors[0]


# Beat


def test_beat_polls_the_providers_every_poll_seconds(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://", poll_seconds=60)

    schedule = create_app(settings).conf.beat_schedule

    entry = next(e for e in schedule.values() if e["task"] == constants.POLL_TASK)
    assert entry["schedule"] == 60
    assert entry["options"]["expires"] == 60


def test_beat_polls_every_five_minutes_by_default(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, broker_url="memory://"))

    entry = next(e for e in app.conf.beat_schedule.values() if e["task"] == constants.POLL_TASK)

    assert entry["schedule"] == 300
    assert constants.POLL_TASK in app.tasks
