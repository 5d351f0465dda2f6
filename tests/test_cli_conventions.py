"""The command line's conventions: --version, -h everywhere, help on every option,
statuses as choices in any case, one-line errors, and user text never read as markup."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import update
from typer import _click
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from policies.outcome import Failure
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.providers.base import Outbound, SendFailed, Sent
from scheduler.settings import Settings
from scheduler.store.models import Line, WebhookEvent

Run = Callable[..., tuple[int, str]]
LINE = "+14155550100"
TO = "+14155550123"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
PASSWORD = "s3cret-pw"
#: What a provider that refuses every send says: markup, and a closing tag with no opening.
REFUSAL = "[bold]no such chat[/bold] [/x]"


class Refusing:
    """A provider that refuses every message, in words that look like Rich markup."""

    deduplicates = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, message: Outbound) -> Sent:
        raise SendFailed(Failure.REJECTED, REFUSAL)

    def close(self) -> None:
        pass


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

    with freeze_time(NOW):
        assert run("init")[0] == 0
        yield run


def commands(
    command: _click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], _click.Command]]:
    """Every command and group under ``command``, with the words that reach it."""
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))


ALL = list(commands(get_command(app)))


def test_version_prints_the_installed_package_version(cli: Run) -> None:
    assert cli("--version") == (0, f"healthgate {version('healthgate')}\n")


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p) or "healthgate")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_short_and_long_help(cli: Run, path: tuple[str, ...], flag: str) -> None:
    code, output = cli(*path, flag)

    assert code == 0, output
    assert "Usage:" in output


@pytest.mark.parametrize(
    ("path", "command"), ALL, ids=[" ".join(p) or "healthgate" for p, _ in ALL]
)
def test_every_option_and_argument_has_help(path: tuple[str, ...], command: _click.Command) -> None:
    missing = [p.name for p in command.params if not getattr(p, "help", None)]
    assert missing == []


@pytest.mark.parametrize("written", ["at_risk", "At_Risk", "AT_RISK"])
def test_a_chat_status_is_accepted_in_any_case(cli: Run, written: str) -> None:
    assert cli("health", "chat", LINE, TO, written) == (0, f"chat {LINE} → {TO}: AT_RISK\n")
    assert json.loads(cli("status", "--json")[1])["chats"] == {"AT_RISK": 1}


@pytest.mark.parametrize(("written", "kept"), [("flagged", "FLAGGED"), ("Critical", "CRITICAL")])
def test_a_line_state_is_accepted_in_any_case(cli: Run, written: str, kept: str) -> None:
    assert cli("health", "line", LINE, written) == (0, f"line {LINE}: {kept}\n")


@pytest.mark.parametrize("written", ["applied", "APPLIED", "Rejected"])
def test_events_outcome_is_accepted_in_any_case(cli: Run, written: str) -> None:
    assert cli("events", "--outcome", written)[0] == 0


def test_choices_are_listed_in_help(cli: Run) -> None:
    output = cli("health", "chat", "-h")[1].lower()
    assert all(name in output for name in ("healthy", "at_risk", "critical", "opted_out"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def a_file_in_the_way(tmp_path: Path, port: int) -> dict[str, str]:
    (tmp_path / "plain-file").write_text("x")
    return {"HEALTHGATE_DATA_DIR": str(tmp_path / "plain-file" / "data")}


def policy_is_a_folder(tmp_path: Path, port: int) -> dict[str, str]:
    return {"HEALTHGATE_POLICY_FILE": str(tmp_path)}


def postgres_closed(tmp_path: Path, port: int) -> dict[str, str]:
    return {"HEALTHGATE_DATABASE_URL": f"postgresql://hg:{PASSWORD}@127.0.0.1:{port}/hg"}


def redis_closed(tmp_path: Path, port: int) -> dict[str, str]:
    return {"HEALTHGATE_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{port}/0"}


def unwritable_data_dir(tmp_path: Path, port: int) -> dict[str, str]:
    (tmp_path / "locked").mkdir(mode=0o500)
    return {"HEALTHGATE_DATA_DIR": str(tmp_path / "locked" / "data")}


def unreadable_policy(tmp_path: Path, port: int) -> dict[str, str]:
    policy = tmp_path / "healthgate.toml"
    policy.chmod(0o000)
    return {"HEALTHGATE_POLICY_FILE": str(policy)}


AS_ROOT = os.geteuid() == 0


@pytest.mark.parametrize(
    ("environment", "args", "named"),
    [
        (a_file_in_the_way, ("enqueue", "--to", TO, "--body", "hi"), "HEALTHGATE_DATA_DIR"),
        (a_file_in_the_way, ("drain",), "plain-file"),
        (policy_is_a_folder, ("status",), "cannot be read"),
        (postgres_closed, ("status",), "cannot use the database postgresql"),
        (postgres_closed, ("db", "upgrade"), "hg:***@127.0.0.1"),
        (redis_closed, ("drain",), "cannot use Redis redis://:***@127.0.0.1"),
        pytest.param(
            unwritable_data_dir,
            ("enqueue", "--to", TO, "--body", "hi"),
            "Permission denied",
            marks=pytest.mark.skipif(AS_ROOT, reason="root writes into a read-only folder"),
        ),
        pytest.param(
            unreadable_policy,
            ("policy", "check"),
            "cannot be read",
            marks=pytest.mark.skipif(AS_ROOT, reason="root reads a file of mode 000"),
        ),
    ],
)
def test_what_the_environment_refuses_is_one_line_and_exit_2(
    cli: Run,
    tmp_path: Path,
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
    environment: Callable[[Path, int], dict[str, str]],
    args: tuple[str, ...],
    named: str,
) -> None:
    # Given a setting that points where healthgate cannot go (a message due, for drain)
    cli("enqueue", "--to", TO, "--body", "hi")
    for name, value in environment(tmp_path, closed_port).items():
        monkeypatch.setenv(name, value)

    # When a command needs it
    code, output = cli(*args)

    # Then one line says what and where, without a traceback or a password
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert output.startswith("error: ")
    assert named in output
    assert "Traceback" not in output
    assert PASSWORD not in output


def test_a_recipient_like_a_closing_tag_is_printed_not_parsed(cli: Run) -> None:
    code, output = cli("enqueue", "--to", "+1[/x]", "--body", "hi")

    assert code == 2
    assert "'+1[/x]'" in output


def test_an_event_id_like_markup_is_listed_as_it_is(cli: Run) -> None:
    # Given a webhook event whose id and detail look like Rich markup
    with closing(Healthgate(Settings())) as client, client.runtime.sessions.begin() as session:
        session.add(
            WebhookEvent(
                id="[/x]evt",
                source="linq",
                event_type="[bold]",
                received_at=NOW,
                outcome="ignored",
                detail="[red]older[/red]",
                payload="{}",
            )
        )

    # When the events are listed
    code, output = cli("events")

    # Then each is shown as written
    assert code == 0, output
    for text in ("[/x]evt", "[bold]", "[red]older[/red]"):
        assert text in output


def test_explain_shows_a_providers_reason_as_it_is(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message its provider refused in words that look like markup
    monkeypatch.setenv("HEALTHGATE_PROVIDERS", json.dumps({"log": f"{__name__}:Refusing"}))
    message_id = cli("enqueue", "--to", TO, "--body", "[bold]hi", "--line", LINE)[1].strip()
    cli("drain")

    # When it is explained
    code, output = cli("explain", message_id)

    # Then the refusal is printed as the provider wrote it
    assert code == 0, output
    assert REFUSAL in output


def test_status_shows_provider_detail_as_it_is(cli: Run) -> None:
    # Given a line whose provider's report holds brackets
    entity = {"entity_type": "[bold]number", "id": "[/x]", "additional_info": "[red]banned"}
    with closing(Healthgate(Settings())) as client, client.runtime.sessions.begin() as session:
        session.execute(
            update(Line).where(Line.number == LINE).values(detail={"entities": [entity]})
        )

    # When the status is shown
    code, output = cli("status")

    # Then the report is printed as written
    assert code == 0, output
    assert "[bold]number [/x]: None: [red]banned" in output
