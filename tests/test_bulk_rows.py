"""Many rows a statement: what ``insert_columns`` and ``update_rows`` store is what they
were given, whichever columns hold one value for every row, and ``rows_by_key`` finds
exactly the rows asked for, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, delete, select

from scheduler.client import Healthgate
from scheduler.store.bulk import (
    columns_of,
    insert_columns,
    insert_rows,
    pipelined,
    rows_by_key,
    update_rows,
)
from scheduler.store.models import Chat, DecisionRecord, OptOut
from tests.conftest import LINE_A, LINE_B

DECISIONS = cast(Table, DecisionRecord.__table__)
CHATS = cast(Table, Chat.__table__)
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
#: Hypothesis runs a test's examples in one test's fixtures: each adds its own rows.
FIXTURE = [HealthCheck.function_scoped_fixture]
COLUMNS = ("action", "code", "reason", "not_before", "line")

# Few distinct values a column, so that many drawn batches have columns of one value.
ROW = st.tuples(
    st.sampled_from(["SEND", "THROTTLE"]),
    st.sampled_from(["ok", "cap"]),
    # Empty text, and text holding the separator that joins a column, go as arrays.
    st.one_of(
        st.sampled_from(["", "a reason", "a\x1fb", "\x1f"]),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4),
    ),
    st.sampled_from([None, NOW, NOW + timedelta(minutes=5)]),
    st.sampled_from([None, "+14155550100"]),
)


def stored(hg: Healthgate, message_id: str) -> list[tuple[Any, ...]]:
    with hg.runtime.sessions() as session:
        rows = session.execute(
            select(*(DECISIONS.c[name] for name in COLUMNS))
            .where(DecisionRecord.message_id == message_id)
            .order_by(DecisionRecord.id)
        )
        return [tuple(row) for row in rows]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(ROW, min_size=1, max_size=6))
def test_inserted_columns_are_stored_as_given(hg: Healthgate, rows: list[tuple[Any, ...]]) -> None:
    # Given a message
    message_id = hg.enqueue(to="+14155550123", body="hello")

    # When rows are inserted a column at a time, the time shared by all of them
    with hg.runtime.sessions.begin() as session:
        session.execute(delete(DecisionRecord).where(DecisionRecord.message_id == message_id))
        columns = {"message_id": [message_id] * len(rows), **columns_of(COLUMNS, rows)}
        insert_columns(session.connection(), DECISIONS, columns, {"at": NOW})

    # Then every row is stored, in order, with its own values
    assert stored(hg, message_id) == rows


def test_identical_rows_are_each_stored(hg: Healthgate) -> None:
    # Given a message
    message_id = hg.enqueue(to="+14155550123", body="hello")
    row = {"message_id": message_id, "at": NOW, "action": "SEND", "code": "ok", "reason": "r"}

    # When three identical rows are inserted
    with hg.runtime.sessions.begin() as session:
        created = insert_rows(session.connection(), DECISIONS, [row] * 3, ("id",))

    # Then there are three more rows, not one
    assert len(created) == 3
    assert len(stored(hg, message_id)) == 4


def test_updated_rows_take_their_own_values_and_the_shared_ones(hg: Healthgate) -> None:
    # Given three decisions
    message_id = hg.enqueue(to="+14155550123", body="hello")
    row = {"message_id": message_id, "at": NOW, "action": "SEND", "code": "ok", "reason": "r"}
    with hg.runtime.sessions.begin() as session:
        ids = [r.id for r in insert_rows(session.connection(), DECISIONS, [row] * 3, ("id",))]

    # When they are updated, each with its own code and all with one new action
    with hg.runtime.sessions.begin() as session:
        update_rows(
            session.connection(),
            DECISIONS,
            [{"id": i, "action": "THROTTLE", "code": f"code-{i}"} for i in ids],
        )

    # Then each row has its own code and the shared action
    with hg.runtime.sessions() as session:
        found = session.execute(
            select(DecisionRecord.id, DecisionRecord.action, DecisionRecord.code).where(
                DecisionRecord.id.in_(ids)
            )
        )
        assert sorted(tuple(r) for r in found) == [
            (i, "THROTTLE", f"code-{i}") for i in sorted(ids)
        ]


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE)
@given(
    wanted=st.sets(
        st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from(["+14155550001", "+14155550002"]))
    )
)
def test_rows_by_key_finds_exactly_the_rows_with_the_given_keys(
    hg: Healthgate, wanted: set[tuple[int, str]]
) -> None:
    # Given chats on lines 1 and 2 with two recipients, none on line 3
    for line in (LINE_A, LINE_B):
        for to in ("+14155550001", "+14155550002"):
            hg.enqueue(to=to, body="hi", line=line)

    # When chats are looked up by (line id, recipient), some of them not stored, and the
    # answer is read after a pipeline ends (as enqueue reads it)
    with hg.runtime.sessions() as session:
        connection = session.connection()
        with pipelined(connection):
            answer = rows_by_key(
                connection, CHATS, ("line_id", "recipient"), wanted, ("line_id", "recipient")
            )
        rows = answer()
        stored = {(line, to) for line, to in session.execute(select(Chat.line_id, Chat.recipient))}

    # Then exactly the stored ones among them are found, each once
    found = [(row.line_id, row.recipient) for row in rows]
    assert sorted(found) == sorted(wanted & stored)


def test_a_single_row_of_empty_text_is_inserted(hg: Healthgate) -> None:
    # An empty string joined alone is no value at all once split: it goes as an array
    with hg.runtime.sessions.begin() as session:
        insert_columns(
            session.connection(),
            cast(Table, OptOut.__table__),
            {"recipient": [""]},
            {"opted_out_at": NOW, "source": "test"},
        )

    with hg.runtime.sessions() as session:
        assert list(session.scalars(select(OptOut.recipient))) == [""]
