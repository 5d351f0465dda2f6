"""Real processes: Celery worker and beat on Redis + PostgreSQL, and `healthgate run`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy

from scheduler.client import Healthgate
from scheduler.providers.log import read_send_log
from scheduler.settings import Settings
from tests.conftest import LINE_A, LINE_B, POLICY
from tests.services import require_redis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll real processes for an outcome; the deadline only bounds a broken run."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    """A port nothing listens on now, so parallel runs never fight over one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHGATE_")}
    env.update(
        HEALTHGATE_DATA_DIR=str(settings.data_dir),
        HEALTHGATE_POLICY_FILE=str(settings.policy_file),
        HEALTHGATE_TICK_SECONDS="0.5",
        HEALTHGATE_WEB_PORT=str(free_port()),
    )
    if settings.database_url:
        env["HEALTHGATE_DATABASE_URL"] = settings.database_url
    if settings.broker_url:
        env["HEALTHGATE_BROKER_URL"] = settings.broker_url
    return env


def web_ok(env: dict[str, str]) -> bool:
    try:
        url = f"http://127.0.0.1:{env['HEALTHGATE_WEB_PORT']}/healthz"
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


@pytest.fixture
def redis_settings(tmp_path: Path, postgres_database: str) -> Settings:
    url = require_redis()
    client = redis.Redis.from_url(url)
    client.flushdb()  # the test database only: stale tasks of an earlier run go
    client.close()
    policy = tmp_path / "healthgate.toml"
    # Caps high enough that this test measures dispatch, not pacing (tested elsewhere).
    policy.write_text(
        POLICY + "[caps]\nsends_per_minute = 1000\ndistinct_recipients_per_hour = 1000\n"
        "new_conversations_per_day = 1000\n"
        "[content]\nsame_body_max_recipients_per_hour = 1000\n"
    )
    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE decisions, messages, opt_outs, chats, lines CASCADE")
    engine.dispose()
    return Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        database_url=postgres_database,
        broker_url=url,
    )


def states(hg: Healthgate) -> dict[str, int]:
    counts: dict[str, int] = hg.status()["messages"]
    return counts


def test_worker_and_beat_on_redis_dispatch_through_the_gate(redis_settings: Settings) -> None:
    # Given a worker and beat on Redis, and messages for healthy, AT_RISK and CRITICAL chats
    hg = Healthgate(redis_settings)
    hg.sync_lines()
    hg.set_chat_health(LINE_A, "+14155550190", "AT_RISK")
    hg.set_chat_health(LINE_A, "+14155550191", "CRITICAL")
    healthy = [hg.enqueue(to=f"+141555502{i:02d}", body="hi", line=LINE_B) for i in range(40)]
    at_risk = [hg.enqueue(to="+14155550190", body=f"r{i}", line=LINE_A) for i in range(2)]
    held = hg.enqueue(to="+14155550191", body="held", line=LINE_A)
    env = environment(redis_settings)
    celery = [sys.executable, "-m", "celery", "-A", "tasks"]
    worker = subprocess.Popen(
        [
            *celery,
            "worker",
            "--loglevel=WARNING",
            "--concurrency=2",
            "--without-mingle",
            "--without-gossip",
        ],
        env=env,
    )
    beat = subprocess.Popen([*celery, "beat", "--loglevel=WARNING"], env=env)
    try:
        # When beat ticks and the worker dispatches
        wait_until(lambda: states(hg).get("sent", 0) == 41, 90, "41 sends")
        wait_until(lambda: hg.explain(held)["state"] == "deferred", 30, "the CRITICAL hold")
        hg.set_chat_health(LINE_A, "+14155550191", "HEALTHY")
        wait_until(lambda: hg.explain(held)["state"] == "sent", 60, "the released message")
    finally:
        stop(beat)
        worker_code = stop(worker)
        hg.close()

    # Then each message went out once, the AT_RISK chat's second one waits, and the worker
    # stopped cleanly
    log = read_send_log(redis_settings.send_log_path)
    sent_ids = [record["message_id"] for record in log]
    assert sorted(sent_ids) == sorted([*healthy, at_risk[0], held])
    assert Healthgate(redis_settings).explain(at_risk[1])["state"] == "throttled"
    assert worker_code == 0


def test_healthgate_run_on_the_embedded_default_survives_a_restart(tmp_path: Path) -> None:
    # Given only a policy file: no Redis, no PostgreSQL
    settings = Settings(data_dir=tmp_path / "data", policy_file=tmp_path / "healthgate.toml")
    env = environment(settings)
    cli = [sys.executable, "-m", "scheduler.cli"]
    subprocess.run([*cli, "init"], env=env, check=True, cwd=tmp_path, capture_output=True)
    hg = Healthgate(settings)

    def sent() -> set[str]:
        return {r["message_id"] for r in read_send_log(settings.send_log_path)}

    # When `healthgate run` dispatches, stops, and starts again on the same data directory
    run = subprocess.Popen([*cli, "run"], env=env, cwd=tmp_path)
    try:
        first = hg.enqueue(to="+14155550123", body="one")
        wait_until(lambda: first in sent(), 60, "the first send")
        wait_until(lambda: web_ok(env), 30, "the web process beside worker and beat")
    finally:
        first_code = stop(run)
    second = hg.enqueue(to="+14155550124", body="two, while stopped")
    run = subprocess.Popen([*cli, "run"], env=env, cwd=tmp_path)
    try:
        wait_until(lambda: second in sent(), 60, "the send after the restart")
    finally:
        second_code = stop(run)
        hg.close()

    # Then both were sent exactly once and both runs stopped cleanly
    assert sorted(r["message_id"] for r in read_send_log(settings.send_log_path)) == sorted(
        [first, second]
    )
    assert (first_code, second_code) == (0, 0)
