"""Bulk enqueue: keys, chats, opt-outs and errors of a many-message call, on every store."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from scheduler.client import Healthgate
from scheduler.errors import InvalidInput
from scheduler.store.bulk import pipelined
from scheduler.store.models import Chat, Message, OptOut
from tests.conftest import LINE_A, LINE_B


def count(hg: Healthgate, model: type[Message] | type[Chat]) -> int:
    with hg.runtime.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def pinned(i: int, **extra: Any) -> dict[str, Any]:
    """A message to a recipient of its own on one of the two lines, with a key."""
    return {
        "to": f"+1415555{1000 + i:04d}",
        "body": f"order {i}",
        "line": (LINE_A, LINE_B)[i % 2],
        "idempotency_key": f"order-{i}",
        **extra,
    }


def test_stored_keys_repeated_keys_and_new_ones_in_one_call(hg: Healthgate) -> None:
    stored = hg.enqueue(to="+14155550123", body="first", idempotency_key="k1")

    ids = hg.enqueue_many(
        [
            {"to": "+14155550123", "body": "first", "idempotency_key": "k1"},
            pinned(2),
            pinned(2),
            {"to": "+14155550124", "body": "no key"},
            pinned(3),
        ]
    )

    assert ids[0] == stored
    assert ids[1] == ids[2]
    assert len({ids[1], ids[3], ids[4], stored}) == 4
    assert count(hg, Message) == 4
    with hg.runtime.sessions() as session:
        assert session.get_one(Message, stored).body == "first"


def test_a_call_of_only_stored_keys_returns_their_ids_and_stores_nothing(hg: Healthgate) -> None:
    first = hg.enqueue_many([pinned(i) for i in range(5)])

    again = hg.enqueue_many([pinned(i) for i in reversed(range(5))])

    assert again == list(reversed(first))
    assert (count(hg, Message), count(hg, Chat)) == (5, 5)


@pytest.mark.parametrize(
    ("size", "bad", "part"),
    [
        (50, 37, None),  # one part
        (10, 9, 3),  # in the last of four parts, the earlier ones written already
    ],
)
def test_one_bad_message_among_many_stores_no_message_and_no_chat(
    hg: Healthgate, monkeypatch: pytest.MonkeyPatch, size: int, bad: int, part: int | None
) -> None:
    if part is not None:
        monkeypatch.setattr(sys.modules["scheduler.intake.outbox"], "ENQUEUE_PART", part)
    messages = [pinned(i) for i in range(size)]
    messages[bad]["to"] = "+1415555"

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many(messages)

    assert raised.value.field == f"messages[{bad}].to"
    assert "+1415555" in str(raised.value)
    assert (count(hg, Message), count(hg, Chat)) == (0, 0)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ("hello", "messages[1]"),
        ({"to": "+1415555", "body": "x"}, "messages[1].to"),
    ],
)
def test_a_bad_item_is_named_by_its_index_and_the_first_keeps_its_index(
    hg: Healthgate, item: object, field: str
) -> None:
    # When the second of two items is not a message, or has a bad number
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([pinned(0), item])  # type: ignore[list-item]

    # Then the error names it by its index, and nothing is stored
    assert raised.value.field == field
    assert count(hg, Message) == 0

    # And in a call of several, the first message's fields carry its index too
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([{"to": "+1415555", "body": "x"}, pinned(1)])
    assert raised.value.field == "messages[0].to"


def test_an_undeclared_line_is_named_by_its_own_index_after_a_stored_key(
    hg: Healthgate,
) -> None:
    hg.enqueue_many([pinned(0)])

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([pinned(0), pinned(1), pinned(2, line="+14155550199")])

    assert raised.value.field == "messages[2].line"
    assert "+14155550199" in str(raised.value)
    assert count(hg, Message) == 1


def test_many_messages_reuse_existing_chats_and_create_the_others(hg: Healthgate) -> None:
    hg.enqueue_many([pinned(i, idempotency_key=None) for i in range(3)])

    hg.enqueue_many([pinned(i, idempotency_key=None) for i in range(6)])

    assert (count(hg, Message), count(hg, Chat)) == (9, 6)


def test_a_chat_id_given_in_bulk_is_kept_on_an_existing_chat(hg: Healthgate) -> None:
    hg.enqueue(to="+14155550123", body="hello", line=LINE_A)

    hg.enqueue_many(
        [
            {"to": "+14155550123", "body": "again", "line": LINE_A, "chat_id": "chat-1"},
            pinned(1),
        ]
    )

    with hg.runtime.sessions() as session:
        chat = session.scalars(select(Chat).where(Chat.recipient == "+14155550123")).one()
    assert chat.provider_chat_id == "chat-1"


def test_many_messages_to_an_opted_out_chat_are_dropped(hg: Healthgate) -> None:
    hg.set_chat_health(LINE_A, "+14155550123", "OPTED_OUT")

    ids = hg.enqueue_many(
        [
            {"to": "+14155550123", "body": "one", "line": LINE_A},
            {"to": "+14155550124", "body": "two", "line": LINE_A},
        ]
    )

    assert [hg.explain(i)["state"] for i in ids] == ["dropped", "queued"]
    assert hg.explain(ids[0])["decisions"][-1]["code"] == "chat_opted_out"


def test_a_chat_id_another_chat_holds_is_refused_naming_it(hg: Healthgate) -> None:
    hg.enqueue(to="+14155550123", body="a", line=LINE_B, chat_id="chat-1")
    hg.enqueue(to="+14155550123", body="b", line=LINE_A)

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue(to="+14155550123", body="c", line=LINE_A, chat_id="chat-1")

    assert raised.value.field == "chat_id"
    assert "'chat-1'" in str(raised.value)
    assert count(hg, Message) == 2


def test_a_new_chat_is_refused_a_chat_id_another_chat_holds(hg: Healthgate) -> None:
    hg.enqueue(to="+14155550123", body="a", line=LINE_B, chat_id="chat-1")

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([pinned(0), pinned(1, chat_id="chat-1")])

    assert raised.value.field == "messages[1].chat_id"
    assert (count(hg, Message), count(hg, Chat)) == (1, 1)


def test_one_chat_id_given_to_two_new_chats_in_a_call_is_refused(hg: Healthgate) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.enqueue_many([pinned(0, chat_id="chat-1"), pinned(1, chat_id="chat-1")])

    assert raised.value.field == "messages[1].chat_id"
    assert (count(hg, Message), count(hg, Chat)) == (0, 0)


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls stored three messages a part, so a short call has several."""
    monkeypatch.setattr(sys.modules["scheduler.intake.outbox"], "ENQUEUE_PART", 3)


@pytest.mark.usefixtures("small_parts")
def test_a_call_in_parts_is_stored_whole_with_keys_and_chats_shared_across_parts(
    hg: Healthgate,
) -> None:
    # Given a call of ten: a key and a recipient of the first part come back in the
    # next part, whose look-ups are sent before the first part is written
    messages = [pinned(i) for i in range(8)]
    messages.insert(3, pinned(0))  # key order-0
    messages.insert(4, {**pinned(1), "idempotency_key": "order-9"})  # order-1's chat

    ids = hg.enqueue_many(messages)

    # Then the repeated key returns the first id, and the chat is created once
    assert ids[3] == ids[0]
    assert len(set(ids)) == 9
    assert (count(hg, Message), count(hg, Chat)) == (9, 8)
    assert hg.explain(ids[4])["line"] == hg.explain(ids[1])["line"]


def test_an_error_inside_a_pipeline_is_sqlalchemys_and_nothing_of_it_is_stored(
    hg: Healthgate,
) -> None:
    insert = (
        "INSERT INTO opt_outs (recipient, opted_out_at, source) "
        "VALUES ('+14155550123', CURRENT_TIMESTAMP, 'test')"
    )

    def write_twice() -> None:
        with hg.runtime.engine.begin() as connection, pipelined(connection):
            connection.exec_driver_sql(insert)
            connection.exec_driver_sql(insert)

    # When the same opt-out is written twice inside a pipeline
    with pytest.raises(IntegrityError):
        write_twice()

    # Then the error is SQLAlchemy's, as outside one, and neither row is stored
    with hg.runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OptOut)) == 0


@pytest.mark.usefixtures("small_parts")
def test_a_call_in_parts_routes_messages_without_a_line_and_fills_in_chat_ids(
    hg: Healthgate,
) -> None:
    # Given a stored chat without a provider chat id
    first = hg.enqueue(**pinned(0))

    # When a call in parts mixes it (now with a chat id), messages without a line, and
    # messages on named lines
    messages: list[dict[str, Any]] = [pinned(i) for i in range(1, 7)]
    messages.insert(2, {**pinned(0), "idempotency_key": "again", "chat_id": "chat-0"})
    messages.insert(4, {"to": "+14155559001", "body": "routed"})
    messages.append({"to": "+14155559002", "body": "routed too"})
    ids = hg.enqueue_many(messages)

    # Then every message is stored once, the routed ones on a line, and the stored chat
    # has its provider chat id
    assert len(set(ids)) == len(ids) == 9
    assert all(hg.explain(i)["state"] == "queued" for i in ids)
    assert hg.explain(ids[4])["line"] in (LINE_A, LINE_B)
    with hg.runtime.sessions() as session:
        chat_id = session.scalar(
            select(Chat.provider_chat_id)
            .join(Message, Message.chat_id == Chat.id)
            .where(Message.id == first)
        )
    assert chat_id == "chat-0"
