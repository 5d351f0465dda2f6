"""Data hygiene: no password in what healthgate prints or logs, no whole value in an
error, state files only their owner may read, and what people wrote purged in time."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydantic.v1  # noqa: F401  FastAPI imports it lazily, which fails once freezegun fakes date
import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from policies.errors import InvalidInput
from scheduler import constants, runner
from scheduler.cli import app
from scheduler.client import Healthgate
from scheduler.settings import UNREADABLE_URL, Settings, masked_url
from scheduler.signals.webhooks.inbox import LinqInbox
from scheduler.store.models import Message, WebhookEvent
from scheduler.store.retention import purge
from scheduler.store.transitions import read_decisions
from scheduler.web import create_app
from tasks.application import create_app as create_celery_app
from tests.conftest import LINE_A, POLICY, START
from tests.linq_events import SECRET, line_event, message_event, signed
from tests.services import REDIS_URL
from tests.web_client import reader, web_settings

PASSWORD = "hunter2-Sup3rSecret"
BOB = "+14155550123"
CAROL = "+14155550124"
DAN = "+14155550125"
LONG = 1_100_000


def with_password(url: str, user: str = "postgres") -> str:
    """``url`` with ``user:PASSWORD@`` put in (PostgreSQL here trusts, so it still works)."""
    scheme, rest = url.split("://", 1)
    rest = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{PASSWORD}@{rest}"


# --- secrets -------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Run the CLI in a fresh folder with the given HEALTHGATE_* settings."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "DATA_DIR", "POLICY_FILE"):
        monkeypatch.delenv(f"HEALTHGATE_{name}", raising=False)

    def _set(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"HEALTHGATE_{name.upper()}", value)

    return _set


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_init_prints_the_database_url_with_its_password_masked(
    env: Callable[..., None], postgres_database: str
) -> None:
    # Given a database URL with a password
    env(database_url=with_password(postgres_database))

    # When the database is set up
    code, output = cli("init")

    # Then the URL is shown, its password masked
    assert code == 0, output
    assert PASSWORD not in output
    assert "postgres:***@127.0.0.1" in output


def test_run_banner_masks_every_url(
    env: Callable[..., None], postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given database, broker and Redis URLs with passwords, and no processes really started
    env(
        database_url=with_password(postgres_database),
        broker_url=with_password(REDIS_URL, user=""),
        redis_url=with_password(REDIS_URL, user="limits"),
    )
    assert cli("init")[0] == 0
    started: list[dict[str, list[str]]] = []
    monkeypatch.setattr(
        runner, "supervise", lambda processes, *_, **__: started.append(processes) or 0
    )

    # When the main job starts
    code, output = cli("run", "--no-web")

    # Then its banner names every URL with the password masked
    assert code == 0, output
    assert started, "supervise was not reached"
    assert PASSWORD not in output
    assert "database postgresql+psycopg://postgres:***@127.0.0.1" in output
    assert "broker redis://:***@127.0.0.1:6379" in output
    assert "redis://limits:***@127.0.0.1:6379" in output


@pytest.mark.parametrize(
    "field", ["database_url", "broker_url", "redis_url", "linq_base_url", "d360_base_url"]
)
def test_repr_and_str_of_settings_mask_the_password(field: str) -> None:
    settings = Settings(**{field: f"redis://user:{PASSWORD}@db.internal:6379/0"})

    for shown in (repr(settings), str(settings)):
        assert PASSWORD not in shown
        assert "redis://user:***@db.internal:6379/0" in shown
    # Programs still read the URL as given.
    assert getattr(settings, field) == f"redis://user:{PASSWORD}@db.internal:6379/0"


def test_the_runtime_and_the_celery_app_log_urls_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given settings whose broker and Redis URLs have passwords
    caplog.set_level(logging.INFO)
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    settings = Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        broker_url=f"redis://:{PASSWORD}@127.0.0.1:6379/13",
        redis_url=f"redis://limits:{PASSWORD}@127.0.0.1:6379/13",
    )

    # When a client and the Celery app are built (neither connects yet)
    Healthgate(settings).close()
    create_celery_app(settings)

    # Then they say where they point, passwords masked
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert PASSWORD not in logged
    assert "caps counted in redis://limits:***@127.0.0.1:6379/13" in logged
    assert "broker redis://:***@127.0.0.1:6379/13" in logged


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("database_url", f"postgresql://app:{PASSWORD}@db:notaport/healthgate"),
        ("redis_url", f"redis://app:{PASSWORD}@cache:notaport/0"),
    ],
)
def test_a_url_that_cannot_be_read_is_an_error_that_does_not_quote_it(
    tmp_path: Path, setting: str, url: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", **{setting: url})

    with pytest.raises(InvalidInput) as raised:
        Healthgate(settings)

    assert raised.value.field == f"HEALTHGATE_{setting.upper()}"
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"postgresql://app:{PASSWORD}@db/hg", "postgresql://app:***@db/hg"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            f"postgresql://app@db/hg?password={PASSWORD}",
            "postgresql://app@db/hg?password=%2A%2A%2A",
        ),
        (
            f"sentinel://:{PASSWORD}@s1:26379;sentinel://:{PASSWORD}@s2:26379",
            "sentinel://:***@s1:26379;sentinel://:***@s2:26379",
        ),
        (
            f"postgresql://app:x@db/hg?sslpassword={PASSWORD}",
            "postgresql://app:***@db/hg?sslpassword=%2A%2A%2A",
        ),
        (
            f"postgresql://app@db/hg?options=-c%20password%3D{PASSWORD}",
            "postgresql://app@db/hg?options=%2A%2A%2A",
        ),
        (f"redis://{PASSWORD}@cache:6379/0", "redis://%2A%2A%2A@cache:6379/0"),
        (
            "postgresql://postgres@db/hg?sslmode=require",
            "postgresql://postgres@db/hg?sslmode=require",
        ),
        ("sqlite:///.healthgate/healthgate.db", "sqlite:///.healthgate/healthgate.db"),
        ("filesystem://", "filesystem://"),
        (f"redis://app:{PASSWORD}@x@cache/0", UNREADABLE_URL),  # an unescaped @
        (f"not a url {PASSWORD}", UNREADABLE_URL),
        (f"postgresql://app:{PASSWORD}@db:port/hg", UNREADABLE_URL),
    ],
)
def test_masked_url(url: str, masked: str) -> None:
    assert masked_url(url) == masked


@given(
    password=st.text(min_size=1),
    scheme=st.sampled_from(["postgresql+psycopg", "redis", "rediss", "amqp"]),
)
def test_any_escaped_password_is_masked_and_the_rest_kept(password: str, scheme: str) -> None:
    # The model: the same URL with *** where the password was.
    url = f"{scheme}://app:{quote(password, safe='')}@host.internal:1234/0"

    assert masked_url(url) == f"{scheme}://app:***@host.internal:1234/0"


# --- error values --------------------------------------------------------------------


def assert_shortened(message: str, length: int) -> None:
    assert len(message) < 300, f"{len(message):,} characters"
    assert f"({length:,} characters)" in message


def test_an_api_error_shows_a_long_value_cut_and_keeps_it_whole(hg: Healthgate) -> None:
    body = "x" * (LONG - 1) + "\x00"

    with pytest.raises(InvalidInput) as raised:
        hg.enqueue(to=BOB, body=body)

    assert_shortened(str(raised.value), LONG)
    assert str(raised.value).startswith("body='xxxx")
    assert raised.value.value == body


def test_a_cli_error_shows_a_long_value_cut(env: Callable[..., None]) -> None:
    env()
    assert cli("init")[0] == 0
    status = "S" * LONG

    code, output = cli("health", "chat", LINE_A, BOB, status)

    assert code == 2
    assert "status=" in output
    # The value is cut in the field and in the problem that names it again.
    assert len(output) < 600, f"{len(output):,} characters"
    assert output.count(f"({LONG:,} characters)") == 2


def test_web_errors_show_a_long_value_cut(settings: Settings, hg: Healthgate) -> None:
    # Given the web app, a signed event whose sender is 400,000 characters long, and a
    # message id of 60,000 (an HTTP client sends no longer URL)
    handle = "+1" + "5" * 399_998
    body, headers = signed(message_event(LINE_A, handle, START, text="hi"), START)
    web = create_app(web_settings(settings))

    # When both reach it
    with reader(web) as client:
        refused = client.post("/webhooks/linq", content=body, headers=headers)
        missing = client.get("/messages/" + "m" * 60_000)
        events = client.get("/events").json()
        [event] = [e for e in events if e["outcome"] == "rejected"]

    # Then every answer, and the event's recorded detail, shows the value cut
    assert refused.status_code == 422, refused.text[:200]
    assert refused.json()["field"] == "data.sender_handle.handle"
    assert_shortened(refused.json()["error"], 400_000)
    assert_shortened(refused.json()["value"], 400_000)
    assert_shortened(event["detail"], 400_000)
    assert missing.status_code == 404
    assert_shortened(missing.json()["error"], 60_000)


# --- files ---------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A common umask (022), so the modes below are healthgate's, not the machine's."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def embedded(tmp_path: Path, env: Callable[..., None]) -> Settings:
    """The embedded default: SQLite, the folder broker and the log provider."""
    env()
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    return Settings(data_dir=tmp_path / "state", policy_file=policy)


def test_the_embedded_default_keeps_its_files_to_its_owner(
    tmp_path: Path, env: Callable[..., None], open_umask: None
) -> None:
    # Given the embedded default, with its Celery app built (the folder broker)
    settings = embedded(tmp_path, env)
    create_celery_app(settings)
    client = Healthgate(settings)
    try:
        # When a message is enqueued and dispatched
        client.migrate()
        client.enqueue(to=BOB, body="Your results are ready")
        assert client.drain().counts["SENT"] == 1

        # Then every folder is 0700 and every file 0600, the umask unchanged
        data = settings.data_dir
        database = data / constants.SQLITE_FILE
        for folder in (data, settings.broker_dir, settings.broker_dir / "queue"):
            assert mode(folder) == 0o700, folder
        assert mode(settings.broker_dir / "control") == 0o700
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert mode(path) == 0o600, path
        assert mode(settings.send_log_path) == 0o600
        assert os.umask(0o022) == 0o022
    finally:
        client.close()


PROBE = """
import os, sys
from scheduler import cli

@cli.app.command("probe")
def probe() -> None:
    with open(os.environ["PROBE"], "w"):  # as Celery's beat or kombu's folder broker do
        pass

sys.argv = ["healthgate", "probe"]
cli.main()
"""


def test_files_others_make_under_healthgate_commands_are_the_owners_only(
    tmp_path: Path,
) -> None:
    # Given a shell's common umask (022), When a healthgate command's process (or one it
    # starts: the worker, beat) makes a file with a plain open()
    probe = tmp_path / "made-by-a-library"
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PROBE": str(probe)},
        preexec_fn=lambda: os.umask(0o022),
        capture_output=True,
        text=True,
        check=False,
    )

    # Then it is the owner's only
    assert done.returncode == 0, done.stderr
    assert mode(probe) == 0o600


def test_files_an_older_version_left_open_are_tightened(
    tmp_path: Path, env: Callable[..., None], open_umask: None
) -> None:
    # Given a data folder, database and send log an older version left 0755 / 0644
    settings = embedded(tmp_path, env)
    first = Healthgate(settings)
    first.migrate()
    first.enqueue(to=BOB, body="hello")
    first.drain()
    first.close()
    database = settings.data_dir / constants.SQLITE_FILE
    settings.data_dir.chmod(0o755)
    for path in (database, settings.send_log_path):
        path.chmod(0o644)

    # When healthgate opens them again and sends
    client = Healthgate(settings)
    client.enqueue(to=CAROL, body="hello")
    client.drain()
    client.close()

    # Then they are its owner's only
    assert mode(settings.data_dir) == 0o700
    assert mode(database) == 0o600
    assert mode(settings.send_log_path) == 0o600


# --- retention -----------------------------------------------------------------------


def deliver(hg: Healthgate, payload: dict[str, Any], at: datetime) -> int:
    """A signed Linq event through the real inbox; its HTTP status."""
    body, headers = signed(payload, at)
    return LinqInbox(hg.runtime, SecretStr(SECRET)).receive(body, headers).status_code


def rows(hg: Healthgate) -> tuple[dict[str, Message], dict[str, WebhookEvent]]:
    with hg.runtime.sessions() as session:
        messages = {m.id: m for m in session.scalars(select(Message))}
        events = {e.id: e for e in session.scalars(select(WebhookEvent))}
    return messages, events


def trail(hg: Healthgate, ids: list[str]) -> dict[str, list[Any]]:
    with hg.runtime.sessions() as session:
        return {i: read_decisions(session, i) for i in ids}


@pytest.fixture
def history(hg: Healthgate, clock: FrozenDateTimeFactory) -> dict[str, Any]:
    """Messages and webhook events 40 days old and 10 days old, finished or not."""
    old_sent = hg.enqueue(to=BOB, body="old and sent", line=LINE_A)
    old_waiting = hg.enqueue(
        to=CAROL, body="old, still waiting", line=LINE_A, send_at=START + timedelta(days=400)
    )
    hg.drain()
    assert (
        deliver(
            hg, message_event(LINE_A, BOB, START, text="my own words", chat_id="chat_bob"), START
        )
        == 200
    )
    assert deliver(hg, line_event(LINE_A, START, new_reputation="SICK"), START) == 422
    assert (
        deliver(hg, message_event(LINE_A, DAN, START, text="STOP", chat_id="chat_dan"), START)
        == 200
    )
    old_dropped = hg.enqueue(to=DAN, body="old and dropped", line=LINE_A)
    clock.tick(timedelta(days=30))
    recent = START + timedelta(days=30)
    recent_sent = hg.enqueue(to=BOB, body="recent and sent", line=LINE_A)
    hg.drain()
    assert (
        deliver(
            hg, message_event(LINE_A, BOB, recent, text="newer words", chat_id="chat_bob"), recent
        )
        == 200
    )
    clock.tick(timedelta(days=10))
    _, events = rows(hg)
    old_events = {k for k, e in events.items() if e.received_at == START}
    return {
        "old_finished": [old_sent, old_dropped],
        "kept": [old_waiting, recent_sent],
        "old_events": old_events,
        "recent_events": set(events) - old_events,
    }


@pytest.mark.parametrize("batch", [1, 2, constants.PURGE_BATCH])
def test_purge_empties_old_finished_bodies_and_keeps_the_trail(
    hg: Healthgate, history: dict[str, Any], batch: int
) -> None:
    # Given messages and events 40 and 10 days old, and their decisions
    ids = history["old_finished"] + history["kept"]
    decisions = trail(hg, ids)
    messages_before, events_before = rows(hg)
    now = START + timedelta(days=40)

    # When what is older than 30 days is purged, ``batch`` rows a transaction
    purged = purge(hg.runtime.sessions, now - timedelta(days=30), now, batch)

    # Then the old finished messages' and the old events' bodies are gone, marked
    messages, events = rows(hg)
    # (No worker delivers outcomes: theirs, never to be told, go too.)
    assert purged == (2, 3, 0, 2)
    for message_id in history["old_finished"]:
        message, before = messages[message_id], messages_before[message_id]
        assert (message.body, message.purged_at) == ("", now)
        assert (message.state, message.updated_at, message.body_hash) == (
            before.state,
            before.updated_at,
            before.body_hash,
        )
    for event_id in history["old_events"]:
        event, before = events[event_id], events_before[event_id]
        assert (event.payload, event.purged_at) == ("", now)
        assert (event.event_type, event.outcome, event.received_at) == (
            before.event_type,
            before.outcome,
            before.received_at,
        )
        assert event.detail == (None if event.outcome == "rejected" else before.detail)
    # ...and every decision, the unfinished message and everything recent are untouched
    assert trail(hg, ids) == decisions
    for message_id in history["kept"]:
        assert messages[message_id].body == messages_before[message_id].body
        assert messages[message_id].purged_at is None
    for event_id in history["recent_events"]:
        assert events[event_id].payload == events_before[event_id].payload
        assert events[event_id].purged_at is None
    # ...and a second purge finds nothing left
    assert purge(hg.runtime.sessions, now - timedelta(days=30), now, batch) == (0, 0, 0, 0)


def test_the_client_purges_past_the_retention_setting(
    hg: Healthgate, history: dict[str, Any]
) -> None:
    assert hg.runtime.settings.retention_days == 30

    # (No callback is configured: their outcomes, never to be told, go too.)
    assert hg.purge() == (2, 3, 0, 2)
    assert (
        hg.explain(history["old_finished"][0])["purged_at"]
        == (START + timedelta(days=40)).isoformat()
    )


def test_beat_purges_daily_with_the_retention_setting(
    settings: Settings, hg: Healthgate, history: dict[str, Any]
) -> None:
    # Given the Celery app of settings that keep bodies 35 days
    celery = create_celery_app(settings.model_copy(update={"retention_days": 35}))

    # Then beat runs the purge once a day, and the task purges past 35 days
    entry = celery.conf.beat_schedule["healthgate-purge"]
    assert (entry["task"], entry["schedule"]) == (constants.PURGE_TASK, 86_400.0)
    assert celery.tasks[constants.PURGE_TASK]() == {
        "messages": 2,
        "webhook_events": 3,
        "workers": 0,
        "outcomes": 2,
    }


# --- the purge command ---------------------------------------------------------------


@pytest.fixture
def embedded_cli(env: Callable[..., None], tmp_path: Path) -> Path:
    """`healthgate init` on the embedded default, one message sent on day 0."""
    env()
    with freeze_time(START):
        assert cli("init")[0] == 0
        code, message_id = cli("enqueue", "--to", BOB, "--body", "Dr Okafor moved your visit")
        assert code == 0, message_id
        assert cli("drain")[0] == 0
    return tmp_path


def body_of(cli_dir: Path) -> str:
    client = Healthgate(Settings(data_dir=cli_dir / ".healthgate"))
    with client.runtime.sessions() as session:
        body = session.scalars(select(Message.body)).one()
    client.close()
    return body


def test_the_purge_command_purges_and_prints_counts(embedded_cli: Path) -> None:
    # Given a message sent 31 days ago
    with freeze_time(START + timedelta(days=31)):
        # When bodies older than 32 days are purged, nothing goes; older than 30, it does
        assert cli("purge", "--older-than", "32d") == (
            0,
            "purged: 0 message bodies, 0 webhook bodies, 0 worker(s) gone, "
            "0 outcome(s) forgotten\n",
        )
        assert body_of(embedded_cli) == "Dr Okafor moved your visit"
        code, output = cli("purge", "--older-than", "12h", "--json")

    # Then it prints the counts, and the body is gone
    assert code == 0, output
    assert json.loads(output) == {
        "messages": 1,
        "webhook_events": 0,
        "workers": 0,
        "outcomes": 1,
    }
    assert body_of(embedded_cli) == ""


@pytest.mark.parametrize(
    "value",
    # ... and digits of other scripts (Arabic-Indic, full width), which \d would take
    [
        *("30", "30x", "d", "-1d", "1.5d", "thirty days", "9999999999d", "36501d", "0d"),
        *("\u0663\u0660d", "\uff13\uff10d"),
    ],
)
def test_the_purge_command_refuses_a_bad_duration_and_changes_nothing(
    embedded_cli: Path, value: str
) -> None:
    with freeze_time(START + timedelta(days=31)):
        code, output = cli("purge", "--older-than", value)

    assert code == 2
    assert f"--older-than={value!r}" in output
    assert body_of(embedded_cli) == "Dr Okafor moved your visit"
