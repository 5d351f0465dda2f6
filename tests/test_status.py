"""`healthgate status` and `GET /status`: why each line's messages wait, and when they go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy import update
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.store.models import Line
from tests.backlog_world import BUSY_RECIPIENT, LINE, OTHER, World, build

NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
#: A provider's reason with text that is HTML and Rich markup both.
HOSTILE_DETAIL = {
    "entities": [
        {
            "entity_type": "phone_number",
            "id": "pn-1",
            "can_send_message": "LIMITED",
            "additional_info": ["[/x] <script>alert(2)</script> [bold]quality[/bold]"],
        }
    ]
}


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[World, Healthgate, FrozenDateTimeFactory]]:
    """`healthgate init` in a fresh directory, then the two-line backlog at NOW."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    with freeze_time(NOW - timedelta(hours=1)) as clock:
        assert CliRunner().invoke(app, ["init"]).exit_code == 0
        hg = Healthgate(Settings())
        built = build(hg, NOW, later=lambda: clock.move_to(NOW))
        yield built, hg, clock
        hg.close()


def status(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["status", *args])
    return result.exit_code, result.output


def not_before(hg: Healthgate, ids: list[str]) -> list[datetime]:
    found = [hg.explain(i)["not_before"] for i in ids if hg.explain(i)["state"] == "throttled"]
    return [datetime.fromisoformat(at) for at in found]


def caps(line: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {cap["name"]: (cap["used"], cap["limit"]) for cap in line["caps"]}


def test_status_json_says_why_each_line_waits_and_when_it_drains(
    world: tuple[World, Healthgate, FrozenDateTimeFactory],
) -> None:
    built, hg, _ = world

    code, output = status("--json")

    data = json.loads(output)
    assert code == 0
    first, second = data["lines"]
    # The keys status always had are still there
    assert (first["number"], first["reputation"], first["dispatched_24h"]) == (LINE, "HEALTHY", 20)
    assert data["messages"] == {"sent": 22, "throttled": 9, "deferred": 1}
    # Each line's queue by state and by reason
    assert first["waiting"] == {"throttled": 5, "deferred": 1}
    assert first["waiting_by_reason"] == {"cap_sends_per_minute": 5, "chat_critical": 1}
    assert second["waiting_by_reason"] == {"cap_sends_per_recipient_per_minute": 4}
    assert data["waiting"]["by_reason"] == {
        "cap_sends_per_minute": 5,
        "cap_sends_per_recipient_per_minute": 4,
        "chat_critical": 1,
    }
    assert data["waiting"]["by_state"] == {"throttled": 9, "deferred": 1}
    # Caps as they apply now, with their windows' use: OTHER is AT_RISK, at half pace
    assert caps(first)["sends_per_minute"] == (20, 20)
    assert caps(first)["new_conversations_per_day"] == (20, 100)
    assert caps(first)["distinct_recipients_per_hour"] == (20, 60)
    assert (second["pace"], caps(second)["sends_per_minute"]) == ("AT_RISK pace", (2, 10))
    assert caps(second)["sends_per_recipient_per_minute"] == (2, 2)
    assert caps(second)["sends_per_recipient_per_day"] == (2, 10)
    # The oldest waiting message: the one to the CRITICAL chat, an hour older
    assert first["oldest_waiting"] == {
        "id": built.critical_id,
        "since": (NOW - timedelta(hours=1)).isoformat(),
        "state": "deferred",
        "reason": "chat_critical",
    }
    assert data["waiting"]["oldest"]["id"] == built.critical_id
    # The estimate: the last held message's turn (the deferred one waits for health)
    for line, ids in ((first, built.line_ids), (second, built.other_ids)):
        last = max(not_before(hg, ids))
        assert last > NOW
        assert line["estimate"] == {
            "due": len(not_before(hg, ids)),
            "drains_at": last.isoformat(),
            "seconds": int((last - NOW).total_seconds()),
        }


def test_status_estimate_counts_queued_messages_at_a_new_recipients_pace(
    world: tuple[World, Healthgate, FrozenDateTimeFactory],
) -> None:
    # Given 10 more messages on LINE, due and not yet looked at by the gate
    built, hg, _ = world
    hg.enqueue_many([{"to": f"+1415555{2000 + i}", "body": "x", "line": LINE} for i in range(10)])

    line = json.loads(status("--json")[1])["lines"][0]

    # Then they join after the last held turn, one a new-conversation pace each
    last = max(not_before(hg, built.line_ids))
    expected = last + timedelta(days=1) / 100 * 10
    assert line["estimate"]["drains_at"] == expected.isoformat()
    assert line["estimate"]["due"] == 15


def test_status_table_shows_reasons_caps_oldest_and_estimate(
    world: tuple[World, Healthgate, FrozenDateTimeFactory],
) -> None:
    built, hg, _ = world
    with hg.runtime.sessions.begin() as session:
        session.execute(update(Line).where(Line.number == OTHER).values(detail=HOSTILE_DETAIL))
    seconds = json.loads(status("--json")[1])["lines"][1]["estimate"]["seconds"]

    code, output = status()

    assert code == 0, output
    for text in (
        "cap_sends_per_minute",
        "cap_sends_per_recipient_per_minute",
        "chat_critical",
        "AT_RISK pace",
        built.critical_id,
        "20/20",
        "2/10",
        f"{seconds // 60} min {seconds % 60} s (4 due)",
    ):
        assert text in output, text
    # The provider's words are printed as they are, not read as Rich markup
    assert "[/x] <script>alert(2)</script> [bold]quality[/bold]" in output
    assert BUSY_RECIPIENT not in output  # recipients are not listed by the status
