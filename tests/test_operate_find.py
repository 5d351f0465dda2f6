"""Finding messages: every filter through the client, the web and the command line,
and on PostgreSQL each filter read through an index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from policies.errors import InvalidInput
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store.listing import MessageFilter, messages
from scheduler.web import create_app
from tests.conftest import LINE_A, LINE_B, START
from tests.web_client import reader, web_settings

BOB = "+14155550123"
CAROL = "+14155550124"


@pytest.fixture
def found(hg: Healthgate, clock: FrozenDateTimeFactory) -> dict[str, str]:
    """Four messages: BOB's on A sent 3 days ago, CAROL's held on a CRITICAL line B
    2 hours ago, BOB's with a key on B now, and CAROL's on A cancelled now."""
    ids = {"old": hg.enqueue(to=BOB, body="old", line=LINE_A)}
    hg.drain()
    clock.tick(timedelta(days=3) - timedelta(hours=2))
    hg.set_line_health(LINE_B, "CRITICAL")
    ids["held"] = hg.enqueue(to=CAROL, body="held", line=LINE_B)
    hg.drain()
    clock.tick(timedelta(hours=2))
    ids["keyed"] = hg.enqueue(to=BOB, body="keyed", line=LINE_B, idempotency_key="order-9")
    ids["cancelled"] = hg.enqueue(to=CAROL, body="gone", line=LINE_A)
    hg.cancel(ids["cancelled"])
    return ids


FILTERS: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["cancelled", "keyed", "held", "old"]),
    ({"to": "+1 (415) 555-0123"}, ["keyed", "old"]),
    ({"line": LINE_B}, ["keyed", "held"]),
    ({"state": "DEFERRED"}, ["held"]),
    ({"state": "cancelled"}, ["cancelled"]),
    ({"reason": "line_critical"}, ["held"]),
    ({"reason": "sent"}, ["old"]),
    ({"idempotency_key": "order-9"}, ["keyed"]),
    ({"newer_than": "3h"}, ["cancelled", "keyed", "held"]),
    ({"newer_than": "1h"}, ["cancelled", "keyed"]),
    ({"older_than": "1d"}, ["old"]),
    ({"older_than": "1h", "newer_than": "2d"}, ["held"]),
    ({"newer_than": (START + timedelta(days=1)).isoformat()}, ["cancelled", "keyed", "held"]),
    ({"to": CAROL, "line": LINE_A}, ["cancelled"]),
    ({"limit": 2}, ["cancelled", "keyed"]),
]


def names(ids: dict[str, str], rows: list[dict[str, Any]]) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[row["id"]] for row in rows]


@pytest.mark.parametrize(("given", "expected"), FILTERS)
def test_each_filter_finds_exactly_its_messages_newest_first(
    hg: Healthgate, found: dict[str, str], given: dict[str, Any], expected: list[str]
) -> None:
    assert names(found, hg.messages(**given)) == expected


def test_ages_may_be_timedeltas_or_datetimes(hg: Healthgate, found: dict[str, str]) -> None:
    assert names(found, hg.messages(newer_than=timedelta(hours=1))) == ["cancelled", "keyed"]
    assert names(found, hg.messages(older_than=START + timedelta(hours=1))) == ["old"]


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"to": "4155550123"}, "to"),
        ({"line": "not a number"}, "line"),
        ({"state": "lost"}, "state"),
        ({"reason": "cap_sends_per_fortnight"}, "reason"),
        ({"newer_than": "0m"}, "newer_than"),
        ({"newer_than": "yesterday"}, "newer_than"),
        ({"older_than": "2026-11-22T09:00:00"}, "older_than"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ],
)
def test_bad_filters_name_the_field(hg: Healthgate, given: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        hg.messages(**given)
    assert raised.value.field == field


@pytest.fixture
def web(settings: Settings, hg: Healthgate) -> Iterator[TestClient]:
    with reader(create_app(web_settings(settings))) as client:
        yield client


@pytest.mark.parametrize(("given", "expected"), FILTERS)
def test_the_web_takes_the_same_filters(
    web: TestClient, found: dict[str, str], given: dict[str, Any], expected: list[str]
) -> None:
    response = web.get("/messages", params=given)
    assert response.status_code == 200, response.text
    rows = response.json()
    assert names(found, rows) == expected
    # The keys readers already use are all there
    assert all(
        {"id", "to", "line", "state", "not_before", "code", "reason", "created_at", "sent_at"}
        <= set(row)
        for row in rows
    )


def test_the_web_refuses_a_bad_filter_naming_it(web: TestClient) -> None:
    response = web.get("/messages", params={"state": "lost"})
    assert response.status_code == 422
    assert response.json()["field"] == "state"


def test_the_command_prints_a_table_and_json(
    settings: Settings, found: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "DATABASE_URL": settings.database_url,
        "DATA_DIR": str(settings.data_dir),
        "POLICY_FILE": str(settings.policy_file),
        "BROKER_URL": "memory://",
    }.items():
        monkeypatch.setenv(f"HEALTHGATE_{name}", value)
    runner = CliRunner()
    result = runner.invoke(app, ["messages", "--line", LINE_B, "--json"])
    assert result.exit_code == 0, result.output
    assert names(found, json.loads(result.output)) == ["keyed", "held"]
    table = runner.invoke(app, ["messages", "--state", "Deferred"], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if found["held"] in line)
    assert CAROL in row
    assert "line_critical" in row
    assert "deferred" in row
    assert "1 message(s)" in table.output
    bad = runner.invoke(app, ["messages", "--newer-than", "soon"])
    assert bad.exit_code == 2
    assert "newer_than" in bad.output
    # A list cut by its limit says so
    cut = runner.invoke(app, ["messages", "--limit", "1"])
    assert cut.exit_code == 0, cut.output
    assert "1 message(s) (the newest 1: --limit shows more)" in cut.output
    # and a line's state, refused, lists every state the command takes
    sick = runner.invoke(app, ["health", "line", LINE_B, "sick"])
    assert sick.exit_code == 2
    assert "HEALTHY, AT_RISK, CRITICAL, ACTIVE, FLAGGED" in sick.output


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (MessageFilter(recipient=BOB), "ix_messages_recipient_created"),
        (MessageFilter(state="failed"), "ix_messages_state_created"),
        (MessageFilter(code="cap_sends_per_minute"), "ix_messages_code_created"),
        (MessageFilter(idempotency_key="order-9"), "messages_idempotency_key_key"),
        (MessageFilter(newer_than=START), "ix_messages_created"),
    ],
)
def test_each_filter_reads_an_index_on_postgresql(
    postgres_database: str, where: MessageFilter, index: str
) -> None:
    # Given a table big enough that the planner prefers an index to reading it all
    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as connection:
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        statement, params = messages_query(connection, where)
        rows = connection.exec_driver_sql("EXPLAIN " + statement, params).fetchall()
        plan = "\n".join(row[0] for row in rows)
    engine.dispose()
    assert index in plan, plan
    assert "Seq Scan on messages" not in plan


def messages_query(
    connection: sqlalchemy.Connection, where: MessageFilter
) -> tuple[str, dict[str, Any]]:
    """The SQL ``listing.messages`` runs for ``where``, and its values."""
    captured: list[tuple[str, dict[str, Any]]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        captured.append((statement, dict(params)))

    sqlalchemy.event.listen(connection, "before_cursor_execute", capture)
    with Session(bind=connection) as session:
        messages(session, None, 50, where)
    sqlalchemy.event.remove(connection, "before_cursor_execute", capture)
    return captured[-1]
