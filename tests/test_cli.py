"""The checks users make, driving only the CLI and the policy file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from typer.testing import CliRunner

from scheduler.cli import app

Run = Callable[..., tuple[int, str]]
LINE = "+14155550100"
OTHER = "+14155550101"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    """`healthgate ...` in a fresh directory on the embedded default, after `init`."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    with freeze_time(datetime(2026, 11, 22, 9, 0, tzinfo=UTC)):
        assert run("init")[0] == 0
        yield run


def enqueue(run: Run, to: str, *extra: str) -> str:
    code, output = run("enqueue", "--to", to, "--body", "hello", *extra)
    assert code == 0, output
    return output.strip()


def explain(run: Run, message_id: str) -> dict[str, object]:
    code, output = run("explain", message_id, "--json")
    assert code == 0, output
    data: dict[str, object] = json.loads(output)
    return data


def codes(run: Run, message_id: str) -> list[str]:
    decisions = explain(run, message_id)["decisions"]
    assert isinstance(decisions, list)
    return [d["code"] for d in decisions]


def sends(tmp_path: Path) -> list[str]:
    path = tmp_path / ".healthgate" / "sends.jsonl"
    return [json.loads(line)["message_id"] for line in path.read_text().splitlines()]


def test_init_writes_a_policy_file_that_checks_ok(cli: Run, tmp_path: Path) -> None:
    assert (tmp_path / "healthgate.toml").exists()
    assert cli("policy", "check", "healthgate.toml") == (0, "ok (2 line(s))\n")


def test_healthy_chat_message_is_sent_once(cli: Run, tmp_path: Path) -> None:
    message_id = enqueue(cli, "+14155550123", "--line", LINE)

    cli("drain")
    cli("drain")

    assert sends(tmp_path) == [message_id]
    assert explain(cli, message_id)["state"] == "sent"


def test_at_risk_second_message_is_throttled_and_explained(cli: Run, tmp_path: Path) -> None:
    cli("health", "chat", LINE, "+14155550123", "AT_RISK")
    first = enqueue(cli, "+14155550123", "--line", LINE)
    second = enqueue(cli, "+14155550123", "--line", LINE)

    cli("drain")

    assert sends(tmp_path) == [first]
    assert codes(cli, second)[-1] == "chat_at_risk"
    code, text = cli("explain", second)
    assert code == 0
    assert "THROTTLE" in text
    assert "AT_RISK" in text


def test_critical_chat_is_deferred_then_sent_when_healthy(cli: Run, tmp_path: Path) -> None:
    cli("health", "chat", LINE, "+14155550123", "CRITICAL")
    message_id = enqueue(cli, "+14155550123", "--line", LINE)

    cli("drain")
    assert explain(cli, message_id)["state"] == "deferred"
    # A report of the same instant would not end the pause: the worse one wins a tie.
    with freeze_time(datetime(2026, 11, 22, 9, 0, 1, tzinfo=UTC)):
        cli("health", "chat", LINE, "+14155550123", "HEALTHY")
        cli("drain")

    assert sends(tmp_path) == [message_id]
    assert codes(cli, message_id)[-4:] == ["chat_critical", "release_chat", "ok", "sent"]


def test_opted_out_chat_queue_is_dropped(cli: Run, tmp_path: Path) -> None:
    queued = [enqueue(cli, "+14155550123", "--line", LINE) for _ in range(2)]

    cli("health", "chat", LINE, "+14155550123", "OPTED_OUT")
    cli("drain")

    assert not (tmp_path / ".healthgate" / "sends.jsonl").exists()
    assert [explain(cli, m)["state"] for m in queued] == ["dropped", "dropped"]
    assert codes(cli, queued[0])[-1] == "chat_opted_out"


def test_critical_line_sends_nothing(cli: Run, tmp_path: Path) -> None:
    cli("health", "line", OTHER, "CRITICAL")
    message_id = enqueue(cli, "+14155550123", "--line", OTHER)

    cli("drain")

    assert not (tmp_path / ".healthgate" / "sends.jsonl").exists()
    assert codes(cli, message_id)[-1] == "line_critical"


def test_status_reports_lines_chats_and_messages(cli: Run) -> None:
    cli("health", "line", OTHER, "AT_RISK")
    cli("health", "chat", LINE, "+14155550123", "CRITICAL")
    enqueue(cli, "+14155550123", "--line", LINE)

    code, output = cli("status", "--json")

    data = json.loads(output)
    assert code == 0
    assert [(x["number"], x["reputation"]) for x in data["lines"]] == [
        (LINE, "HEALTHY"),
        (OTHER, "AT_RISK"),
    ]
    assert data["chats"] == {"CRITICAL": 1}
    assert data["messages"] == {"queued": 1}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("enqueue", "--to", "12345", "--body", "x"), "to='12345'"),
        (
            ("enqueue", "--to", "+14155550123", "--body", "x", "--line", "+14155550199"),
            "line='+14155550199'",
        ),
        (
            ("enqueue", "--to", "+14155550123", "--body", "x", "--send-at", "tomorrow"),
            "send_at='tomorrow'",
        ),
        (("health", "line", LINE, "OPTED_OUT"), "status='OPTED_OUT'"),
        (("health", "chat", LINE, "+14155550123", "SICK"), "status='SICK'"),
        (("explain", "msg_nope"), "id='msg_nope'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    cli: Run, args: tuple[str, ...], expected: str
) -> None:
    before = cli("status", "--json")[1]

    code, output = cli(*args)

    assert code == 2
    assert "error:" in output
    assert expected in output
    assert cli("status", "--json")[1] == before


def test_bad_policy_file_names_file_and_key(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[lines]]\nnumber = "+14155550100"\nprovider = "sms"\n')

    code, output = cli("policy", "check", "bad.toml")

    assert code == 2
    assert "bad.toml: lines[0].provider" in output
    assert "'sms'" in output


def test_commands_refuse_a_broken_policy_file_and_change_nothing(cli: Run, tmp_path: Path) -> None:
    before = cli("status", "--json")[1]
    (tmp_path / "healthgate.toml").write_text("[chat]\nat_risk_window_hours = -1\n")

    code, output = cli("enqueue", "--to", "+14155550123", "--body", "x")

    assert code == 2
    assert "healthgate.toml" in output
    (tmp_path / "healthgate.toml").unlink()
    cli("init")
    assert cli("status", "--json")[1] == before
