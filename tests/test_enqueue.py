"""Enqueue: validation, idempotency, bulk, routing at enqueue time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from scheduler.client import Healthgate
from scheduler.errors import InvalidInput
from scheduler.intake.enqueue import NewMessage
from scheduler.store.models import DecisionRecord, Message
from tests.conftest import LINE_A, LINE_B, START


def count_messages(hg: Healthgate) -> int:
    with hg.runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def message(hg: Healthgate, message_id: str) -> Message:
    with hg.runtime.sessions() as session:
        return session.get_one(Message, message_id)


def test_enqueue_returns_id_and_stores_a_queued_message(hg: Healthgate) -> None:
    message_id = hg.enqueue(to="+1 (415) 555-0123", body="hello", line=LINE_A)

    stored = message(hg, message_id)
    assert message_id.startswith("msg_")
    assert (stored.recipient, stored.state, stored.not_before) == ("+14155550123", "queued", START)


def test_same_idempotency_key_returns_same_id_and_one_message(hg: Healthgate) -> None:
    first = hg.enqueue(to="+14155550123", body="hello", idempotency_key="order-1")
    second = hg.enqueue(to="+14155550123", body="hello", idempotency_key="order-1")

    assert first == second
    assert count_messages(hg) == 1


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"to": "4155550123"}, "to", "4155550123"),
        ({"to": "+1415555"}, "to", "+1415555"),
        ({"to": "+14155550123", "line": "+15555550100"}, "line", "+15555550100"),
        ({"to": "+14155550123", "line": "+14155550199"}, "line", "+14155550199"),
        ({"to": "+14155550123", "body": "   "}, "body", "   "),
        ({"to": "+14155550123", "idempotency_key": ""}, "idempotency_key", ""),
        ({"to": "+14155550123", "expires_at": START - timedelta(seconds=1)}, "expires_at", None),
        ({"to": "+14155550123", "send_at": START.replace(tzinfo=None)}, "send_at", None),
    ],
)
def test_bad_input_names_field_and_value_and_stores_nothing(
    hg: Healthgate, kwargs: dict[str, object], field: str, value: object
) -> None:
    arguments: dict[str, object] = {"body": "hello", **kwargs}

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue(**arguments)  # type: ignore[arg-type]

    assert raised.value.field == field
    if value is not None:
        assert repr(value) in str(raised.value)
    assert count_messages(hg) == 0


def test_bulk_enqueue_stores_all_in_order(hg: Healthgate) -> None:
    ids = hg.enqueue_many(
        [
            NewMessage(to="+14155550123", body="one", line=LINE_A),
            {"to": "+14155550124", "body": "two", "line": LINE_B},
            NewMessage(to="+14155550125", body="three", idempotency_key="k3"),
        ]
    )

    assert len(set(ids)) == 3
    assert [message(hg, i).recipient for i in ids] == [
        "+14155550123",
        "+14155550124",
        "+14155550125",
    ]


def test_bulk_enqueue_with_one_bad_message_stores_none(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many(
            [
                {"to": "+14155550123", "body": "fine"},
                {"to": "not a number", "body": "bad"},
            ]
        )

    assert raised.value.field == "messages[1].to"
    assert count_messages(hg) == 0


def test_bulk_enqueue_with_unknown_line_stores_none(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many(
            [
                {"to": "+14155550123", "body": "fine"},
                {"to": "+14155550124", "body": "bad line", "line": "+14155550199"},
            ]
        )

    assert raised.value.field == "messages[1].line"
    assert count_messages(hg) == 0


def test_bulk_enqueue_repeating_a_key_creates_one_message(hg: Healthgate) -> None:
    ids = hg.enqueue_many(
        [
            {"to": "+14155550123", "body": "a", "idempotency_key": "same"},
            {"to": "+14155550123", "body": "a", "idempotency_key": "same"},
        ]
    )

    assert ids[0] == ids[1]
    assert count_messages(hg) == 1


def test_unknown_field_in_bulk_mapping_is_refused(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([{"to": "+14155550123", "body": "a", "sender": LINE_A}])

    assert raised.value.field == "messages[0].sender"


def test_new_recipient_is_routed_to_a_healthy_line_and_sticks(hg: Healthgate) -> None:
    hg.set_line_health(LINE_A, "CRITICAL")

    first = hg.enqueue(to="+14155550123", body="hello")
    hg.drain()
    hg.set_line_health(LINE_A, "HEALTHY")
    second = hg.enqueue(to="+14155550123", body="again")

    assert hg.explain(first)["line"] == LINE_B
    assert hg.explain(second)["line"] == LINE_B


def test_no_line_for_a_new_recipient_defers_with_that_reason(hg: Healthgate) -> None:
    hg.set_line_health(LINE_A, "CRITICAL")
    hg.set_line_health(LINE_B, "CRITICAL")

    message_id = hg.enqueue(to="+14155550123", body="hello")

    explained = hg.explain(message_id)
    assert (explained["state"], explained["line"]) == ("deferred", None)
    assert explained["decisions"][-1]["code"] == "no_line"


def test_enqueue_to_an_opted_out_recipient_is_dropped_with_that_reason(hg: Healthgate) -> None:
    hg.set_chat_health(LINE_A, "+14155550123", "OPTED_OUT")

    message_id = hg.enqueue(to="+14155550123", body="hello", line=LINE_B)

    explained = hg.explain(message_id)
    assert explained["state"] == "dropped"
    assert explained["decisions"][-1]["code"] == "chat_opted_out"


def stored_actions(hg: Healthgate, message_id: str) -> list[str]:
    with hg.runtime.sessions() as session:
        return list(
            session.scalars(
                select(DecisionRecord.action).where(DecisionRecord.message_id == message_id)
            )
        )


def test_a_routed_enqueue_records_its_decision(hg: Healthgate) -> None:
    # When a message without a line is enqueued, healthgate chooses its line
    message_id = hg.enqueue(to="+14155550123", body="hello")

    # Then that choice is a stored record
    assert stored_actions(hg, message_id) == ["ENQUEUE"]


def test_an_enqueue_on_a_named_line_is_explained_from_the_message_itself(hg: Healthgate) -> None:
    # When a message is enqueued on the line the application names, for later
    send_at = START + timedelta(hours=1)
    message_id = hg.enqueue(to="+14155550123", body="hello", line=LINE_A, send_at=send_at)

    # Then nothing was decided, and no record is stored
    assert stored_actions(hg, message_id) == []
    # But explain starts with its enqueue: when, on which line, until when
    [enqueued] = hg.explain(message_id)["decisions"]
    assert enqueued["action"] == "ENQUEUE"
    assert (enqueued["line"], enqueued["not_before"]) == (LINE_A, send_at.isoformat())
    assert enqueued["at"] == START.isoformat()


def test_a_body_too_long_is_named_with_its_first_hundred_characters_and_length(
    hg: Healthgate,
) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue(to="+14155550123", body="B" * 20_000, line=LINE_A)

    assert raised.value.field == "body"
    assert str(raised.value) == (
        f"body='{'B' * 99}… (20,000 characters): is longer than 10000 characters"
    )
