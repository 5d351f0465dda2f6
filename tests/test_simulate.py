"""`healthgate simulate`: worlds, traces, history, and replaying a recorded run."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from freezegun.api import FrozenDateTimeFactory
from hypothesis import given
from hypothesis import strategies as st

from policies.config import load_policy
from policies.statuses import Action
from policies.usage import LineUsage
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.simulate.engine import Scenario, Simulation
from scheduler.simulate.history import history
from scheduler.simulate.run import on_simulated_lines, on_world_lines, world_scenario
from scheduler.simulate.trace import ChatReport, Enqueue, Inbound, LineReport, read_trace
from scheduler.simulate.world import WorldFileError, load_world
from scheduler.store.db import session_factory
from scheduler.store.models import DecisionRecord, Message
from tests.conftest import LINE_A, LINE_B, START

#: A world of one line whose provider flags it above 15 sends in a minute.
PACE_WORLD = """
[world]
start = 2026-11-01T09:00:00Z
days = 0.04
seed = 3

[[providers]]
name = "strict"
evaluate_every_minutes = 5
report_lag_minutes = 1
[providers.line]
flag_sends_per_minute = 15

[[lines]]
number = "+14155550100"
provider = "strict"

[recipients]
count = 5000
[[recipients.segments]]
name = "quiet"
share = 1.0
reply_probability = 0.0
opt_out_probability = 0.0

[[traffic.campaigns]]
name = "burst"
start = 2026-11-01T09:01:00Z
messages = 120
spread_hours = 0.02
body = ["one", "two", "three", "four", "five", "six"]
"""

#: Caps that never bind but the pace one.
OPEN_CAPS = """
[[lines]]
number = "+14155550100"

[caps]
sends_per_minute = {pace}
new_conversations_per_day = 10000
distinct_recipients_per_hour = 10000
sends_per_day = 10000

[content]
same_body_max_recipients_per_hour = 10000
"""


def _policy(tmp_path: Path, name: str, pace: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(OPEN_CAPS.format(pace=pace))
    return path


def _flags(outcome_flags: list[tuple[float, str, str]]) -> list[str]:
    return [status for _, _, status in outcome_flags]


def test_a_line_paced_over_the_providers_limit_is_flagged_under_a_loose_policy_only(
    tmp_path: Path,
) -> None:
    # Given a provider model that flags a line sending more than 15 messages a minute,
    # and a burst of 120 messages to new recipients
    world_file = tmp_path / "world.toml"
    world_file.write_text(PACE_WORLD)
    world = load_world(world_file)
    loose = on_world_lines(load_policy(_policy(tmp_path, "loose", 60)), world, "loose")
    tight = on_world_lines(load_policy(_policy(tmp_path, "tight", 10)), world, "tight")

    # When each policy runs through the world
    scenario = world_scenario(world)
    under_loose = Simulation("loose", loose, scenario, tmp_path / "loose").run()
    under_tight = Simulation("tight", tight, scenario, tmp_path / "tight").run()

    # Then the loose policy's line is flagged
    assert "FLAGGED" in _flags(under_loose.line_flags)
    # and the tight policy's line never is, and every message went
    assert "FLAGGED" not in _flags(under_tight.line_flags)
    assert under_tight.summary()["sent"] == 120
    assert max(max(series) for series in under_tight.sends.values()) <= 10 * 60


# Bad world files: one line naming the file and the key.

GOOD_WORLD = PACE_WORLD


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("seed = 3", "seed = 3\nspeed = 1"), "world.speed"),
        (("days = 0.04", 'days = "many"'), "world.days"),
        (("start = 2026-11-01T09:00:00Z", "start = 2026-11-01T09:00:00"), "world.start"),
        (('provider = "strict"', 'provider = "other"'), "lines[0].provider"),
        (('number = "+14155550100"', 'number = "+1"'), "lines[0].number"),
        (("share = 1.0", "share = 0.5"), "recipients.segments"),
        (("flag_sends_per_minute = 15", "flag_sends_per_minute = -1"), "flag_sends_per_minute"),
        (("messages = 120", "messages = 120\nsegment = 'nobody'"), "traffic.campaigns[0].segment"),
    ],
)
def test_a_bad_world_file_is_named_with_its_key_in_one_line(
    tmp_path: Path, change: tuple[str, str], key: str
) -> None:
    path = tmp_path / "world.toml"
    path.write_text(GOOD_WORLD.replace(*change, 1))
    with pytest.raises(WorldFileError) as raised:
        load_world(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert key in message
    assert "\n" not in message


def test_a_world_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "world.toml"
    path.write_text("[world\nstart = 1")
    with pytest.raises(WorldFileError, match=rf"^{path}: is not valid TOML"):
        load_world(path)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("not json", "line 2"),
        ('{"kind": "fax", "at": "2026-11-01T00:00:00Z"}', "line 2: kind"),
        ('{"kind": "enqueue", "at": "yesterday", "to": "+14155550123", "body": "x"}', "line 2: at"),
        ('{"kind": "enqueue", "at": "2026-11-01T00:00:00", "to": "+1", "body": "x"}', "line 2: at"),
        ('{"kind": "enqueue", "at": "2026-11-01T00:00:00Z", "body": "x"}', "line 2: to"),
        (
            '{"kind": "inbound", "at": "2026-11-01T00:00:00Z", "line": "a", "recipient": "b",'
            ' "text": "STOP", "colour": "red"}',
            "line 2: colour",
        ),
        (
            '{"kind": "line", "at": "2026-10-01T00:00:00Z", "line": "a", "status": "HEALTHY"}',
            "line 2: at",
        ),
    ],
)
def test_a_bad_trace_line_is_named_with_its_file_line_and_key(
    tmp_path: Path, line: str, key: str
) -> None:
    path = tmp_path / "trace.jsonl"
    first = '{"kind": "enqueue", "at": "2026-11-01T00:00:00Z", "to": "+14155550123", "body": "x"}'
    path.write_text(f"{first}\n{line}\n")
    with pytest.raises(WorldFileError) as raised:
        list(read_trace(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: {key}")
    assert "\n" not in message


# A recorded run: the client on a real store, beat's tick every two seconds.

TICK = timedelta(seconds=2)
RECORDED_POLICY = f"""
[[lines]]
number = "{LINE_A}"
provider = "log"

[[lines]]
number = "{LINE_B}"
provider = "log"

[caps]
sends_per_minute = 4
new_conversations_per_day = 12
distinct_recipients_per_hour = 10
"""


@pytest.fixture
def policy_text() -> str:
    return RECORDED_POLICY


def _record(hg: Healthgate, clock: FrozenDateTimeFactory) -> datetime:
    """Enqueues, a STOP, chat and line health, an expiry; a drain at every tick for
    twenty minutes. Returns when it ended."""
    people = [f"+1415200{i:04d}" for i in range(14)]
    script: dict[int, list[tuple[str, tuple[object, ...]]]] = {
        # A wave is one call, as the trace replays messages of one instant.
        1: [("wave", tuple(people))],
        7: [("enqueue", (people[0], "And again", None, "again-0"))],
        9: [("expiring", (people[1], "Soon gone", START + timedelta(seconds=95)))],
        25: [("enqueue", (people[2], "Follow-up", None, "follow-2"))],
        31: [("inbound", (LINE_A, people[2], "STOP"))],
        35: [("enqueue", (people[2], "After STOP", None, "after-stop-2"))],
        41: [("chat", (people[3], "CRITICAL"))],
        61: [("enqueue", (people[3], "Held", None, "held-3"))],
        121: [("line", (LINE_B, "AT_RISK"))],
        301: [("chat", (people[3], "HEALTHY"))],
        401: [("enqueue", (f"+1415300{i:04d}", "Later", None, f"late-{i}")) for i in range(6)],
    }
    end = START + timedelta(minutes=20)
    second = 0
    while START + timedelta(seconds=second) < end:
        now = START + timedelta(seconds=second)
        clock.move_to(now)
        for kind, args in script.get(second, []):
            if kind == "wave":
                hg.enqueue_many(
                    [{"to": p, "body": f"Hello {p}", "idempotency_key": f"wave-{p}"} for p in args]
                )
            elif kind == "enqueue":
                to, body, _line, key = args
                hg.enqueue(str(to), str(body), idempotency_key=str(key))
            elif kind == "expiring":
                to, body, expires = args
                hg.enqueue(str(to), str(body), expires_at=expires)  # type: ignore[arg-type]
            elif kind == "inbound":
                hg.record_inbound(*(str(a) for a in args))
            elif kind == "chat":
                # The chat on the line the router gave the recipient.
                to, status = str(args[0]), str(args[1])
                hg.set_chat_health(hg.messages(to=to)[-1]["line"], to, status)
            else:
                hg.set_line_health(*(str(a) for a in args))
        if second % 2 == 0:
            hg.drain(now)
        second += 1
    return end


GATE_ACTIONS = {
    a.value for a in (Action.SEND, Action.THROTTLE, Action.DEFER, Action.DROP, Action.EXPIRE)
}


def _decisions(engine: sqlalchemy.Engine) -> list[tuple[str, str, datetime]]:
    """(key, action, at) of every gate decision, keyed by idempotency key or id."""
    with session_factory(engine)() as session:
        rows = session.execute(
            sqlalchemy.select(
                Message.idempotency_key, Message.id, DecisionRecord.action, DecisionRecord.at
            )
            .join(Message, Message.id == DecisionRecord.message_id)
            .where(DecisionRecord.action.in_(GATE_ACTIONS))
        )
        return sorted((key or mid, action, at) for key, mid, action, at in rows)


@pytest.fixture
def recorded(hg: Healthgate, clock: FrozenDateTimeFactory) -> tuple[Healthgate, datetime]:
    return hg, _record(hg, clock)


def test_history_rebuilds_the_recorded_enqueues_inbound_messages_and_health(
    recorded: tuple[Healthgate, datetime],
) -> None:
    hg, end = recorded
    events = list(history(hg.runtime.reads, hg.runtime.policy, START, end))

    enqueues = [e for e in events if isinstance(e, Enqueue)]
    assert len(enqueues) == 14 + 1 + 1 + 1 + 1 + 1 + 6
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert any(e.key == "wave-+14152000000" for e in enqueues)
    expiring = next(e for e in enqueues if e.body == "Soon gone")
    assert expiring.expires_at == START + timedelta(seconds=95)
    assert Inbound(START + timedelta(seconds=31), LINE_A, "+14152000002", "STOP") in events
    chats = {(e.recipient, e.status, e.at) for e in events if isinstance(e, ChatReport)}
    assert ("+14152000003", "CRITICAL", START + timedelta(seconds=41)) in chats
    assert ("+14152000003", "HEALTHY", START + timedelta(seconds=301)) in chats
    lines = {(e.line, e.status) for e in events if isinstance(e, LineReport)}
    assert (LINE_B, "AT_RISK") in lines


def test_replaying_a_recorded_run_reproduces_every_gate_decision_within_the_tick(
    recorded: tuple[Healthgate, datetime], settings: Settings, tmp_path: Path
) -> None:
    # Given a run recorded by the store, ticking every two seconds
    hg, end = recorded
    original = _decisions(hg.runtime.engine)
    assert {a for _, a, _ in original} >= {"SEND", "THROTTLE", "DEFER", "DROP", "EXPIRE"}

    # When its history is replayed under the same policy and signals
    policy = on_simulated_lines(load_policy(settings.policy_file), "recorded")
    scenario = Scenario(
        START, end, TICK, lambda: history(hg.runtime.reads, hg.runtime.policy, START, end)
    )
    run = Simulation("replay", policy, scenario, tmp_path / "replay")
    run.run()
    replayed = _decisions(
        sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'replay' / 'replay.sqlite'}")
    )

    # Then every decision is the same, at the same moment within the tick
    assert [(k, a) for k, a, _ in replayed] == [(k, a) for k, a, _ in original]
    for (_, _, was), (_, _, now) in zip(original, replayed, strict=True):
        assert abs(now - was) < TICK


def test_simulate_command_writes_the_report_with_both_policies(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scheduler.cli import app

    world = tmp_path / "world.toml"
    world.write_text(PACE_WORLD.replace("messages = 120", "messages = 30"))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "simulate",
            "--world",
            str(world),
            "--policy",
            str(_policy(tmp_path, "current", 60)),
            "--candidate",
            str(_policy(tmp_path, "candidate", 10)),
            "--out",
            str(tmp_path / "report"),
            "--json",
            "--serial",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["name"] for r in report["runs"]] == ["current", "candidate"]
    assert (tmp_path / "report" / "report.md").read_text().startswith("# healthgate simulate")
    assert (tmp_path / "report" / "enqueue_to_send_cdf.png").stat().st_size > 1000


def test_simulate_refuses_a_bad_world_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from scheduler.cli import app

    world = tmp_path / "world.toml"
    world.write_text(PACE_WORLD.replace("seed = 3", "seed = 'x'"))
    result = CliRunner().invoke(
        app, ["simulate", "--world", str(world), "--policy", str(_policy(tmp_path, "p", 5))]
    )
    assert result.exit_code == 2
    assert f"{world}: world.seed" in result.output


# The simulation's limiter: the memory limiter's answers, with windows it forgets.


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3 * 24 * 60),  # minute of three days
            st.integers(0, 59),  # second
            st.integers(0, 5),  # recipient
            st.booleans(),  # new chat
        ),
        max_size=60,
    ).map(sorted)
)
def test_the_simulated_limiter_answers_as_the_memory_limiter_over_days(
    sends: list[tuple[int, int, int, bool]],
) -> None:
    from policies.pace import Limits
    from scheduler.limits import MemoryLimiter, Ticket
    from scheduler.simulate.limiter import SimulatedLimiter

    caps = Limits(
        sends_per_minute=3,
        new_conversations_per_day=4,
        distinct_recipients_per_hour=3,
        sends_per_day=8,
        sends_per_recipient_per_minute=2,
        sends_per_recipient_per_day=3,
    )
    model, simulated = MemoryLimiter(), SimulatedLimiter()
    for n, (minute, second, who, new) in enumerate(sends):
        now = START + timedelta(minutes=minute, seconds=second)
        ticket = Ticket(f"msg_{n}", 1, LINE_A, f"+1415200{who:04d}", new)
        assert simulated.hit(None, ticket, caps, now) == model.hit(None, ticket, caps, now)  # type: ignore[arg-type]
        windows = simulated.windows({1: LINE_A}, {1: caps}, now, 1, {1: [ticket.recipient]})
        assert windows[1].sent_last_minute(now) == model._usage.get(
            LINE_A, LineUsage()
        ).sent_last_minute(now)
        assert windows[1].recipients_last_hour(now) == model._usage.get(
            LINE_A, LineUsage()
        ).recipients_last_hour(now)


def test_a_trace_written_reads_back_event_for_event(tmp_path: Path) -> None:
    from scheduler.simulate.trace import write_trace
    from scheduler.simulate.traffic import enqueues

    world_file = tmp_path / "world.toml"
    world_file.write_text(PACE_WORLD)
    world = load_world(world_file)
    events = [
        *enqueues(world),
        Inbound(world.world.end, LINE_A, "+14152000001", "STOP"),
        LineReport(world.world.end, LINE_A, "AT_RISK", world.world.end + timedelta(minutes=5)),
        ChatReport(world.world.end + timedelta(minutes=6), LINE_A, "+14152000002", "CRITICAL"),
    ]
    path = tmp_path / "trace.jsonl"
    with open(path, "w") as out:
        assert write_trace(events, out) == len(events)

    assert list(read_trace(path)) == events
