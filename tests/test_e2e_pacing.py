"""Caps hold across real workers: three Celery workers and beat on Redis and PostgreSQL,
with the limiter in Redis or in the database."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy
from sqlalchemy import select

from policies.config import Caps, load_policy
from policies.usage import DAY, HOUR, MINUTE
from scheduler.client import Healthgate
from scheduler.providers.log import read_send_log
from scheduler.settings import Settings
from scheduler.store.models import Line, Message
from tests.services import require_redis
from tests.test_e2e import environment, stop, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LINE_A, LINE_B, LINE_C = "+14155550100", "+14155550101", "+14155550102"

# Small caps, each binding within seconds: a per-minute pace for all, and on each line
# one more cap that binds first.
POLICY = f"""
[[lines]]
number = "{LINE_A}"
caps = {{ distinct_recipients_per_hour = 3 }}

[[lines]]
number = "{LINE_B}"
caps = {{ new_conversations_per_day = 2 }}

[[lines]]
number = "{LINE_C}"
caps = {{ sends_per_recipient_per_minute = 2 }}

[caps]
sends_per_minute = 5
sends_per_day = 100
new_conversations_per_day = 100
distinct_recipients_per_hour = 100
sends_per_recipient_per_minute = 60
sends_per_recipient_per_day = 100

[content]
same_body_max_recipients_per_hour = 1000
"""

#: States a message may rest in at the end: sent, or held to a later moment with a reason.
SETTLED = {"sent", "throttled", "deferred"}


@pytest.fixture(params=["redis", "database"])
def pacing_settings(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: str
) -> Settings:
    """Redis as broker, and as limiter or not (then the caps are counted in PostgreSQL)."""
    url = require_redis()
    client = redis.Redis.from_url(url)
    client.flushdb()  # the test database only: stale tasks and counters of an earlier run
    client.close()
    policy = tmp_path / "healthgate.toml"
    policy.write_text(POLICY)
    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE decisions, messages, opt_outs, chats, lines CASCADE")
    engine.dispose()
    return Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        database_url=postgres_database,
        broker_url=url,
        redis_url=url if request.param == "redis" else None,
    )


def recipient(n: int) -> str:
    return f"+1415555{n:04d}"


def backlog(hg: Healthgate) -> list[str]:
    """Messages for three lines, pinned and routed, many more than the caps allow now."""
    pinned = [(LINE_A, recipient(i % 6)) for i in range(16)]
    pinned += [(LINE_B, recipient(10 + i % 4)) for i in range(16)]
    pinned += [(LINE_C, recipient(20 + i % 2)) for i in range(16)]
    messages: list[dict[str, str]] = [
        {"to": to, "body": "hello", "line": line} for line, to in pinned
    ]
    messages += [{"to": recipient(30 + i), "body": "hello"} for i in range(6)]
    return hg.enqueue_many(messages)


def most_in_window(times: Iterable[datetime], window: timedelta) -> int:
    """The most events inside any sliding window (t - window, t]."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def most_distinct_in_window(sends: list[tuple[datetime, str]], window: timedelta) -> int:
    """The most distinct recipients inside any sliding window (t - window, t]."""
    return max(
        (len({to for when, to in sends if at - window < when <= at}) for at, _ in sends),
        default=0,
    )


def test_caps_hold_across_three_workers(pacing_settings: Settings) -> None:
    # Given a backlog for three lines with small caps, and three workers and beat
    hg = Healthgate(pacing_settings)
    hg.sync_lines()
    # Small batches, so every worker process dispatches part of the backlog at once.
    env = environment(pacing_settings) | {"HEALTHGATE_DISPATCH_BATCH": "2"}
    if pacing_settings.redis_url:
        env["HEALTHGATE_REDIS_URL"] = pacing_settings.redis_url
    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    logs = [pacing_settings.data_dir / f"worker{n}.log" for n in range(3)]
    pacing_settings.data_dir.mkdir(parents=True, exist_ok=True)
    workers = [
        subprocess.Popen(
            [
                *celery,
                "worker",
                f"--hostname=pacing{n}@%h",
                "--loglevel=INFO",
                "--concurrency=2" if n == 0 else "--concurrency=1",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            stderr=logs[n].open("wb"),
        )
        for n in range(3)
    ]
    beat = subprocess.Popen([*celery, "beat", "--loglevel=WARNING"], env=env)
    ids: list[str] = []

    def settled() -> bool:
        states = hg.status()["messages"]
        return set(states) <= SETTLED and states.get("sent", 0) > 0

    try:
        # When, once every worker is ready, they dispatch until every message is sent
        # or held to a later moment
        wait_until(lambda: all(b" ready." in log.read_bytes() for log in logs), 40, "workers")
        ids = backlog(hg)
        wait_until(settled, 40, "every message sent or held")
        # Held messages come due only after their window: nothing more may be sent now.
        sent_then = len(read_send_log(pacing_settings.send_log_path))
    finally:
        stop(beat)
        codes = [stop(worker) for worker in workers]

    # Then each message was sent at most once, or is held with the cap that binds named
    log = read_send_log(pacing_settings.send_log_path)
    sent_ids = [record["message_id"] for record in log]
    assert len(sent_ids) == len(set(sent_ids)) == sent_then
    assert set(sent_ids) <= set(ids)
    engine = sqlalchemy.create_engine(str(pacing_settings.database_url))
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Message.id,
                Message.state,
                Message.last_code,
                Message.dispatched_at,
                Message.recipient,
                Line.number,
                Message.not_before,
                Message.updated_at,
            ).join(Line, Line.id == Message.line_id)
        ).all()
    engine.dispose()
    hg.close()
    by_id = {row.id: row for row in rows}
    assert {row.state for row in rows if row.id in sent_ids} == {"sent"}
    held = [row for row in rows if row.id not in sent_ids]
    assert held, "the caps are small enough that some messages must wait"
    for row in held:
        assert row.state == "throttled", (row.id, row.state, row.last_code)
        assert row.last_code.startswith("cap_"), (row.id, row.last_code)
        assert row.not_before > row.updated_at, (row.id, row.not_before)

    # And no line exceeded any cap in any window, counted from what was sent and timed
    # by the decision times the store recorded
    policy = load_policy(pacing_settings.policy_file)
    per_line: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for message_id in sent_ids:
        row = by_id[message_id]
        per_line[row.number].append((row.dispatched_at, row.recipient))
    assert set(per_line) == {LINE_A, LINE_B, LINE_C}
    for line, sends in per_line.items():
        caps: Caps = policy.caps_for(line)
        times = [at for at, _ in sends]
        seen: dict[str, datetime] = {}
        for at, to in sorted(sends):
            seen.setdefault(to, at)
        per_recipient: dict[str, list[datetime]] = defaultdict(list)
        for at, to in sends:
            per_recipient[to].append(at)
        assert most_in_window(times, MINUTE) <= caps.sends_per_minute, line
        assert most_in_window(times, DAY) <= caps.sends_per_day, line
        assert most_in_window(seen.values(), DAY) <= caps.new_conversations_per_day, line
        assert most_distinct_in_window(sends, HOUR) <= caps.distinct_recipients_per_hour, line
        for to, at_times in per_recipient.items():
            assert most_in_window(at_times, MINUTE) <= caps.sends_per_recipient_per_minute, to
        # The check is not vacuous: every line reached one of its caps
        reached = {
            "minute": most_in_window(times, MINUTE) == caps.sends_per_minute,
            "new": most_in_window(seen.values(), DAY) == caps.new_conversations_per_day,
            "distinct": most_distinct_in_window(sends, HOUR) == caps.distinct_recipients_per_hour,
            "recipient": max(most_in_window(t, MINUTE) for t in per_recipient.values())
            == caps.sends_per_recipient_per_minute,
        }
        assert any(reached.values()), (line, sends)
    assert codes == [0, 0, 0]
