"""Intake under misuse: a reused idempotency key never drops a message silently, a big
call never locks a STOP out, and routing reads each line once a call."""

from __future__ import annotations

import itertools
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select
from typer.testing import CliRunner

from scheduler import IdempotencyConflict
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.store.models import Chat, DecisionRecord, Message
from tests.conftest import LINE_A, LINE_B, POLICY, START, examples

BOB = "+14155550123"
LATER = START + timedelta(hours=1)

#: Another spelling of Bob's number, and the number it is.
SPELLED = {"+1 415 555 0123": BOB}
#: Forms of one message's fields: several spellings of one value, and other values.
TO = st.sampled_from([BOB, "+1 415 555 0123", "+14155550124"])
BODY = st.sampled_from(["hello", "hello ", "HELLO", "x" * 300])
LINE = st.sampled_from([None, LINE_A, LINE_B])
SEND_AT = st.sampled_from(
    [None, LATER, LATER.astimezone(timezone(timedelta(hours=2))), LATER + timedelta(seconds=1)]
)


EXPIRES_AT = st.sampled_from([None, LATER + timedelta(days=1), LATER + timedelta(days=2)])
CATEGORY = st.sampled_from(["transactional", "marketing"])
RECIPIENT_TZ = st.sampled_from([None, "Europe/Paris"])


class Request(NamedTuple):
    to: str
    body: str
    line: str | None
    send_at: datetime | None
    expires_at: datetime | None
    category: str = "transactional"
    recipient_tz: str | None = None


REQUESTS = st.builds(Request, TO, BODY, LINE, SEND_AT, EXPIRES_AT, CATEGORY, RECIPIENT_TZ)


def differing_field(first: Request, again: Request) -> str | None:
    """The model: the first field in which ``again`` asks for another message than
    ``first`` (the line only when ``again`` names one), or None for a repeat."""
    if SPELLED.get(first.to, first.to) != SPELLED.get(again.to, again.to):
        return "to"
    if first.body != again.body:
        return "body"
    if again.line is not None and again.line != first.line:
        return "line"
    if first.send_at != again.send_at:
        return "send_at"
    if first.expires_at != again.expires_at:
        return "expires_at"
    if first.category != again.category:
        return "category"
    if first.recipient_tz != again.recipient_tz:
        return "recipient_tz"
    return None


def snapshot(hg: Healthgate) -> tuple[Any, ...]:
    """Everything an enqueue may write."""
    with hg.runtime.sessions() as session:
        messages = session.execute(
            select(Message.id, Message.idempotency_key, Message.recipient, Message.body).order_by(
                Message.id
            )
        ).all()
        chats = session.scalar(select(func.count()).select_from(Chat))
        decisions = session.scalar(select(func.count()).select_from(DecisionRecord))
    return (tuple(messages), chats, decisions)


_keys = itertools.count()


@settings(
    max_examples=examples(25),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=REQUESTS, again=REQUESTS)
def test_a_key_reused_for_other_content_is_refused_and_a_repeat_returns_the_first_id(
    hg: Healthgate, first: Request, again: Request
) -> None:
    # Given a message stored with a key
    key = f"order-{next(_keys)}"
    first_id = hg.enqueue(
        first.to,
        first.body,
        first.line,
        None,
        key,
        first.send_at,
        first.expires_at,
        category=first.category,
        recipient_tz=first.recipient_tz,
    )
    before = snapshot(hg)

    # When the key comes again with these fields
    def repeat() -> str:
        return hg.enqueue(
            again.to,
            again.body,
            again.line,
            None,
            key,
            again.send_at,
            again.expires_at,
            category=again.category,
            recipient_tz=again.recipient_tz,
        )

    field = differing_field(first, again)
    if field is None:
        # Then an identical repeat returns the first id
        assert repeat() == first_id
    else:
        # Then other content is refused, naming the key and the field
        with pytest.raises(IdempotencyConflict) as raised:
            repeat()
        assert (raised.value.key, raised.value.field) == (key, field)
        assert repr(key) in str(raised.value)
    # and nothing is stored
    assert snapshot(hg) == before


def test_a_conflict_shows_at_most_a_hundred_characters_of_a_value(hg: Healthgate) -> None:
    hg.enqueue(BOB, "a" * 5000, idempotency_key="long")

    with pytest.raises(IdempotencyConflict) as raised:
        hg.enqueue(BOB, "b" * 5000, idempotency_key="long")

    text = str(raised.value)
    assert "body" in text
    assert "a" * 100 not in text
    assert "b" * 100 not in text
    assert "a" * 90 in text
    assert "b" * 90 in text


def test_a_repeat_naming_no_send_at_is_not_the_message_that_waits(hg: Healthgate) -> None:
    # Given a message to go out later
    hg.enqueue(BOB, "hello", idempotency_key="k", send_at=LATER)

    # When the key comes back without send_at (asking for now), it is refused
    with pytest.raises(IdempotencyConflict, match="send_at"):
        hg.enqueue(BOB, "hello", idempotency_key="k")


@pytest.fixture
def small_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three messages a transaction, so that a short call has several."""
    monkeypatch.setattr(sys.modules["scheduler.intake.enqueue"], "ENQUEUE_COMMIT", 3, raising=False)


def message(i: int, **fields: Any) -> dict[str, Any]:
    return {"to": f"+1415555{1000 + i:04d}", "body": f"hi {i}", "idempotency_key": f"k{i}"} | fields


@pytest.mark.usefixtures("small_commits")
@pytest.mark.parametrize("position", [1, 9])
def test_two_messages_of_one_call_with_a_key_and_other_content_store_nothing(
    hg: Healthgate, position: int
) -> None:
    # Given a call in several parts where a later message reuses the first one's key
    messages = [message(i) for i in range(10)]
    messages[position] = message(0, body="other")
    before = snapshot(hg)

    # When it is enqueued, it is refused naming the later message's field and the key
    with pytest.raises(IdempotencyConflict) as raised:
        hg.enqueue_many(messages)
    assert raised.value.field == f"messages[{position}].body"
    assert "messages[0] of this call" in str(raised.value)

    # Then not even the parts before it are stored
    assert snapshot(hg) == before


@pytest.mark.usefixtures("small_commits")
def test_a_call_whose_last_part_conflicts_with_a_stored_message_stores_nothing(
    hg: Healthgate,
) -> None:
    hg.enqueue(**message(8))
    before = snapshot(hg)
    messages = [message(i) for i in range(10)]
    messages[8] = message(8, to="+14155559999")

    with pytest.raises(IdempotencyConflict) as raised:
        hg.enqueue_many(messages)

    assert raised.value.field == "messages[8].to"
    assert snapshot(hg) == before


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    runner = CliRunner()
    with freeze_time(START):
        assert runner.invoke(app, ["init"]).exit_code == 0
        yield runner


def test_the_cli_refuses_a_reused_key_with_exit_code_2(cli: CliRunner) -> None:
    first = cli.invoke(app, ["enqueue", "--to", BOB, "--body", "one", "--idempotency-key", "k"])
    assert first.exit_code == 0
    status = cli.invoke(app, ["status", "--json"]).output

    again = cli.invoke(app, ["enqueue", "--to", BOB, "--body", "two", "--idempotency-key", "k"])

    assert again.exit_code == 2
    assert "error:" in again.output
    assert "idempotency_key='k'" in again.output
    assert "body" in again.output
    assert cli.invoke(app, ["status", "--json"]).output == status


THREE_LINES = POLICY + '\n[[lines]]\nnumber = "+14155550102"\nprovider = "log"\n'


def recipients(count: int) -> list[str]:
    return [f"+1415555{i:04d}" if i < 9000 else f"+1212555{i - 9000:04d}" for i in range(count)]


@pytest.mark.parametrize("policy_text", [THREE_LINES])
@pytest.mark.parametrize("count", [30, 3000])
def test_one_call_spreads_new_recipients_over_equally_healthy_lines(
    hg: Healthgate, count: int
) -> None:
    # Given three HEALTHY lines with nothing sent
    # When one call enqueues new recipients without a line
    ids = hg.enqueue_many({"to": to, "body": "hi"} for to in recipients(count))

    # Then each line takes a share, the largest at most 1.5 times the smallest
    with hg.runtime.sessions() as session:
        lines = Counter(session.scalars(select(Message.line_id).where(Message.id.in_(ids))).all())
    assert set(lines) == {1, 2, 3}
    assert max(lines.values()) <= 1.5 * min(lines.values())


def test_a_recipient_twice_in_one_call_stays_on_one_line(hg: Healthgate) -> None:
    ids = hg.enqueue_many({"to": to, "body": "hi"} for to in [BOB, "+14155550124", BOB])

    assert hg.explain(ids[0])["line"] == hg.explain(ids[2])["line"]
    assert hg.explain(ids[0])["line"] != hg.explain(ids[1])["line"]


class Queries:
    """Statements an engine runs, counted by the SQLAlchemy event the driver sees."""

    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._seen)
        self.engine = engine

    def _seen(self, *args: Any) -> None:
        self.statements.append(args[2])

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)

    def usage_reads(self) -> int:
        return sum("dispatched_at >" in sql or "first_sent_at >" in sql for sql in self.statements)


@pytest.mark.parametrize("policy_text", [THREE_LINES])
def test_routing_reads_each_lines_usage_once_a_call_whatever_its_size(hg: Healthgate) -> None:
    # Given the same call of new recipients without a line, small and large (one
    # storing part each, and then several)
    counted: dict[int, tuple[int, int]] = {}
    for size, offset in ((10, 0), (120, 100), (1000, 2000)):
        queries = Queries(hg.runtime.engine)
        hg.enqueue_many({"to": to, "body": "hi"} for to in recipients(offset + size)[offset:])
        queries.close()
        counted[size] = (queries.usage_reads(), len(queries.statements))

    # Then the lines' usage is read as often for 1,000 as for 10 messages
    assert counted[10][0] == counted[120][0] == counted[1000][0] > 0
    # and a storing part runs as many statements for 120 messages as for 10
    assert counted[10][1] == counted[120][1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stop_during_a_big_call_on_sqlite_is_recorded_and_holds(hg: Healthgate) -> None:
    # Given a call of 15,000 messages without a line, some of them to Bob, spread over it
    count = 15_000
    tos = recipients(count)
    for i in range(0, count, 1000):
        tos[i] = BOB
    began = threading.Event()
    event.listen(hg.runtime.engine, "begin", lambda _connection: began.set())
    failures: list[BaseException] = []

    def enqueue() -> None:
        try:
            hg.enqueue_many({"to": to, "body": "hi"} for to in tos)
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    def stop() -> None:
        try:
            assert began.wait(timeout=60)
            hg.record_inbound(LINE_A, BOB, "STOP")
        except BaseException as exc:
            failures.append(exc)

    # When Bob's STOP arrives once the call has begun writing
    threads = [threading.Thread(target=enqueue), threading.Thread(target=stop)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=110)

    # Then both succeed (no "database is locked"), and every message to Bob, stored
    # before the STOP or after it, is dropped
    assert failures == []
    with hg.runtime.sessions() as session:
        states = session.execute(
            select(Message.state, func.count())
            .where(Message.recipient == BOB)
            .group_by(Message.state)
        ).all()
        total = session.scalar(select(func.count()).select_from(Message))
    assert states == [("dropped", tos.count(BOB))]
    assert total == count
