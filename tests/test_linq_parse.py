"""Reading Linq webhook bodies into facts: pure, no store, no clock."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from policies.errors import InvalidInput
from policies.statuses import ChatHealth, LineReputation, LineStatus
from scheduler.signals.webhooks.linq import ChatHealthSeen, InboundSeen, LineSeen, parse_event
from tests.conftest import LINE_A, START
from tests.linq_events import CHAT_ID, chat_created, line_event, message_event

BOB = "+14155550123"


def parse(payload: dict[str, object]) -> tuple[object, ...]:
    return parse_event(json.dumps(payload).encode()).facts


def test_inbound_text_is_the_text_parts_joined() -> None:
    payload = message_event(LINE_A, BOB, START, text="first")
    payload["data"]["parts"] += [  # type: ignore[index]
        {"type": "media", "url": "https://example.com/a.png"},
        {"type": "text", "value": "second"},
    ]

    [inbound] = parse(payload)

    assert inbound == InboundSeen(CHAT_ID, LINE_A, BOB, "first\nsecond", START)


def test_message_health_comes_before_the_inbound_text() -> None:
    earlier = START - timedelta(minutes=1)
    payload = message_event(LINE_A, BOB, START, text="OPTIN", status="HEALTHY", status_at=earlier)

    facts = parse(payload)

    assert facts == (
        ChatHealthSeen(CHAT_ID, LINE_A, BOB, ChatHealth.HEALTHY, earlier),
        InboundSeen(CHAT_ID, LINE_A, BOB, "OPTIN", START),
    )


def test_outbound_delivery_carries_health_but_no_inbound() -> None:
    payload = message_event(
        LINE_A, LINE_A, START, kind="message.delivered", direction="outbound", status="CRITICAL"
    )

    assert parse(payload) == (ChatHealthSeen(CHAT_ID, LINE_A, None, ChatHealth.CRITICAL, START),)


def test_group_chats_carry_no_signal() -> None:
    payload = message_event(LINE_A, BOB, START, text="STOP", status="OPTED_OUT")
    payload["data"]["chat"]["is_group"] = True  # type: ignore[index]

    event = parse_event(json.dumps(payload).encode())

    assert (event.facts, event.note) == ((), "group chats carry no health signal")


def test_chat_created_names_our_line_and_the_other_handle() -> None:
    assert parse(chat_created(LINE_A, BOB, "AT_RISK", START)) == (
        ChatHealthSeen(
            CHAT_ID,
            LINE_A,
            BOB,
            ChatHealth.AT_RISK,
            START,
            line_field="data.handles[0].handle",
            time_field="data.health_status.updated_at",
        ),
    )


def test_line_event_reads_reputation_status_and_time() -> None:
    payload = line_event(
        LINE_A, START, new_reputation="AT_RISK", new_status="FLAGGED", previous_status="ACTIVE"
    )

    assert parse(payload) == (LineSeen(LINE_A, LineReputation.AT_RISK, LineStatus.FLAGGED, START),)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"data": {"phone_number": LINE_A, "changed_at": START.isoformat()}},
            "data.new_reputation",
        ),
        ({"event_id": 7}, "event_id"),
        ({"data": []}, "data"),
    ],
    ids=["no-reputation-nor-status", "event-id-not-text", "data-not-an-object"],
)
def test_malformed_line_event_names_the_field(change: dict[str, object], field: str) -> None:
    payload = {**line_event(LINE_A, START, new_reputation="HEALTHY"), **change}

    with pytest.raises(InvalidInput) as error:
        parse(payload)

    assert error.value.field == field


def test_inbound_from_an_email_handle_carries_nothing_healthgate_can_act_on() -> None:
    # An Apple ID: healthgate sends to phone numbers only, so the event is valid but
    # nothing in it is about a chat healthgate can send on (the provider is answered 200).
    event = parse_event(
        json.dumps(message_event(LINE_A, "bob@example.com", START, text="STOP")).encode()
    )

    assert event.facts == ()
    assert event.note is not None
    assert "email address" in event.note


def test_message_without_direction_is_refused_naming_it() -> None:
    payload = message_event(LINE_A, BOB, START, text="hi")
    del payload["data"]["direction"]  # type: ignore[attr-defined]

    with pytest.raises(InvalidInput) as error:
        parse(payload)

    assert (error.value.field, error.value.value) == ("data.direction", None)
