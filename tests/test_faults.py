"""Never twice, never after STOP, nothing lost: thousands of sends through real faults.

Three Celery workers and beat on a private Redis (broker and limiter) and PostgreSQL
dispatch a backlog while workers are SIGKILLed (by the suite, and by themselves right
before and after the provider's write, and as a dispatch starts), Redis is killed and
restarted, database connections are terminated, and signed Linq webhooks arrive twice,
out of order, with STOPs mid-backlog. Afterwards the provider's own log is the judge.

Seeds: ``HEALTHGATE_FAULT_SEEDS`` (comma-separated), two by default. Each run prints one
line of figures, also appended to ``HEALTHGATE_FAULT_RESULTS`` when that is set.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import text

from policies.config import load_policy
from policies.usage import DAY, HOUR, MINUTE
from scheduler.client import Healthgate
from scheduler.settings import Settings
from scheduler.web import create_app
from tests.conftest import TABLES
from tests.linq_events import SECRET, chat_health_event, message_event, signed
from tests.services import unavailable
from tests.test_e2e import environment, free_port, wait_until
from tests.test_e2e_pacing import most_distinct_in_window, most_in_window
from tests.web_client import BASE_URL

# A bound, not a duration: the schedule follows progress, so a slow machine takes longer
# (about 160 s a seed under load, 60 s when quiet).
pytestmark = [pytest.mark.faults, pytest.mark.timeout(480)]

SEEDS = [int(s) for s in os.environ.get("HEALTHGATE_FAULT_SEEDS", "1,2").split(",") if s]
LINES = ("+14155550100", "+14155550101", "+14155550102")
MESSAGES = 2000
RECIPIENTS = 250
#: Recipients who send STOP mid-backlog, and recipients whose health events arrive
#: twice and out of order.
STOPPERS = range(0, 250, 25)
HEALTH_EVENTS = range(7, 250, 50)
WORKERS = 3
#: The suite kills a worker each time this much more of the backlog has gone out (a
#: share, drawn between the two): about 25 kills before 90 %, whatever the machine's speed.
KILL_EVERY = (0.025, 0.045)
#: A run (or the settling after it) ends as failed when nothing moved for this long.
STALL_SECONDS = 60.0

#: Distinct recipients a line may reach an hour, when the caps are counted in the
#: database: each line has about 83 recipients, so this binds in every run.
BINDING_DISTINCT = 60


def sendable(limiter: str) -> int:
    """Messages the caps let out during a run (each recipient gets the same number)."""
    if limiter == "redis":
        return MESSAGES
    return min(MESSAGES, len(LINES) * BINDING_DISTINCT * MESSAGES // RECIPIENTS)


def policy_for(limiter: str) -> str:
    """Caps above what a run reaches, but one that binds when counted in the database.

    Redis restarts reset the Redis limiter's windows (documented), so with the Redis
    limiter the suite checks only that no cap is exceeded, not where one binds.
    """
    distinct = BINDING_DISTINCT if limiter == "database" else 5000
    lines = "".join(f'[[lines]]\nnumber = "{line}"\nprovider = "log"\n\n' for line in LINES)
    return lines + (
        "[caps]\nsends_per_minute = 5000\nsends_per_day = 10000\n"
        f"new_conversations_per_day = 5000\ndistinct_recipients_per_hour = {distinct}\n"
        "sends_per_recipient_per_minute = 60\n"
        "[content]\nsame_body_max_recipients_per_hour = 5000\n"
    )


#: Where a message may rest at the end: final, or waiting for a later moment with a reason.
FINAL = {"sent", "dropped", "expired", "failed", "needs_review"}
WAITING = {"throttled", "deferred"}


@dataclass
class Figures:
    seed: int
    #: Where caps are counted: ``redis`` for odd seeds, ``database`` for even ones.
    limiter: str
    messages: int = 0
    kills: int = 0
    redis_restarts: int = 0
    db_drops: int = 0
    duplicates: int = 0
    lost: int = 0
    sends_after_opt_out: int = 0
    cap_overruns: int = 0
    #: Sends a dead worker never confirmed, resent with the same key or flagged.
    reconciled: int = 0
    #: Webhook deliveries refused and delivered again.
    webhooks_refused: int = 0
    #: Lines whose binding cap was reached (database limiter runs).
    caps_reached: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"faults seed={self.seed} limiter={self.limiter} messages={self.messages} "
            f"kills={self.kills} "
            f"redis_restarts={self.redis_restarts} db_drops={self.db_drops} "
            f"duplicates={self.duplicates} lost={self.lost} "
            f"sends_after_opt_out={self.sends_after_opt_out} "
            f"cap_overruns={self.cap_overruns} reconciled={self.reconciled} "
            f"webhooks_refused={self.webhooks_refused} caps_reached={self.caps_reached} "
            f"seconds={self.seconds:.0f}"
        )


class PrivateRedis:
    """A redis-server of the suite's own, killed and restarted at will (never the shared one)."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        command += ["--dir", str(self.folder)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_until(self._answers, 10, "the private Redis")

    def _answers(self) -> bool:
        import redis

        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
            ok = bool(client.ping())
            client.close()
            return ok
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server", "PATH", FileNotFoundError("redis-server"))
        raise AssertionError("unreachable")
    server = PrivateRedis(binary, tmp_path)
    server.start()
    yield server
    server.kill()


class Cluster:
    """Worker process groups and beat; a worker is killed with its pool children."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env = env
        self.folder = folder
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * WORKERS
        self.beat: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start_worker(self, n: int) -> None:
        self.starts += 1
        log = (self.folder / f"worker{n}-{self.starts}.log").open("wb")
        command = [sys.executable, "-m", "celery", "-A", "tests.fault_worker", "worker"]
        command += [f"--hostname=fault{n}-{self.starts}@%h", "--loglevel=WARNING"]
        command += ["--concurrency=1", "--without-mingle", "--without-gossip"]
        self.workers[n] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=log, start_new_session=True
        )

    def start_beat(self) -> None:
        log = (self.folder / "beat.log").open("ab")
        command = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel=WARNING"]
        self.beat = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)

    def kill_worker(self, n: int) -> None:
        worker = self.workers[n]
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        self.start_worker(n)

    def keep_alive(self) -> None:
        """Restart anything that died on its own (beat losing Redis, say)."""
        for n, worker in enumerate(self.workers):
            if worker is None or worker.poll() is not None:
                self.start_worker(n)
        if self.beat is None or self.beat.poll() is not None:
            self.start_beat()

    def stop(self) -> None:
        processes = [p for p in [*self.workers, self.beat] if p is not None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM) if process is not self.beat else (
                    process.terminate()
                )
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL) if process is not self.beat else (
                    process.kill()
                )
                process.wait(timeout=10)


def recipient(n: int) -> str:
    return f"+1415556{n:04d}"


def line_of(n: int) -> str:
    return LINES[n % len(LINES)]


class Webhooks:
    """Signed Linq webhooks through the ASGI app in this process; each one kept for replay."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.delivered: dict[str, tuple[bytes, dict[str, str]]] = {}
        #: Deliveries answered other than 200 (a terminated connection, say), then retried.
        self.refused = 0

    def post(self, payload: dict[str, Any], webhook_id: str) -> None:
        body, headers = signed(payload, datetime.now(UTC), webhook_id=webhook_id)
        self.delivered[webhook_id] = (body, headers)
        self._deliver(body, headers)

    def replay(self, webhook_id: str) -> None:
        self._deliver(*self.delivered[webhook_id])

    def _deliver(self, body: bytes, headers: dict[str, str]) -> None:
        # A webhook the database refused (its connection just terminated) is delivered
        # again, as Linq does with any answer that is not 2xx.
        for _ in range(5):
            answer = self.client.post("/webhooks/linq", content=body, headers=headers)
            if answer.status_code == 200:
                return
            self.refused += 1
        raise AssertionError(f"webhook refused: {answer.status_code} {answer.text}")


def stop_all(webhooks: Webhooks, committed: dict[str, datetime]) -> None:
    """Every STOPPER sends STOP; delivered twice, and an older reply arrives after it.

    Every other STOP arrives late: after a reply the recipient sent later. After each
    STOP the provider reports the chat HEALTHY, which must not clear it.
    """
    for i, n in enumerate(STOPPERS):
        to, chat, line = recipient(n), f"chat_{n}", line_of(n)
        now = datetime.now(UTC)
        stop_at = now
        if i % 2:
            webhooks.post(message_event(line, to, now, text="sure", chat_id=chat), f"reply{n}")
            stop_at = now - timedelta(seconds=20)
        webhooks.post(message_event(line, to, stop_at, text="STOP", chat_id=chat), f"stop{n}")
        committed[to] = datetime.now(UTC)
        webhooks.replay(f"stop{n}")
        older = message_event(line, to, now - timedelta(seconds=30), text="ok", chat_id=chat)
        webhooks.post(older, f"late{n}")
        healthy = chat_health_event(line, "HEALTHY", datetime.now(UTC), chat_id=chat)
        webhooks.post(healthy, f"healthy{n}")


def health_out_of_order(webhooks: Webhooks) -> None:
    """A HEALTHY reading, then an older CRITICAL one, then the first again."""
    now = datetime.now(UTC)
    for n in HEALTH_EVENTS:
        to, chat = recipient(n), f"chat_{n}"
        newer = message_event(
            line_of(n), to, now, text="thanks", status="HEALTHY", status_at=now, chat_id=chat
        )
        stale = now - timedelta(minutes=1)
        older = message_event(
            line_of(n), to, stale, text="hi", status="CRITICAL", status_at=stale, chat_id=chat
        )
        webhooks.post(newer, f"new{n}")
        webhooks.post(older, f"old{n}")
        webhooks.replay(f"new{n}")


class Stall:
    """Whether a figure has stopped moving: the deadline of a run that follows progress."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.value: int | None = None
        self.moved_at = time.monotonic()

    def __call__(self, value: int) -> bool:
        if value != self.value:
            self.value, self.moved_at = value, time.monotonic()
        return time.monotonic() - self.moved_at > self.seconds


class Chaos:
    """Faults and worker kills at moments set by how far the backlog got, never by the
    clock: a loaded machine gets the same faults as a quiet one, only later."""

    #: Each fault once, when this share of the backlog has been sent.
    MILESTONES = (
        ("health", 0.05),
        ("redis", 0.2),
        ("stop", 0.3),
        ("db", 0.4),
        ("redis", 0.55),
        ("db", 0.7),
    )

    def __init__(
        self,
        rng: random.Random,
        figures: Figures,
        cluster: Cluster,
        redis_server: PrivateRedis,
        engine: sqlalchemy.Engine,
        webhooks: Webhooks,
    ) -> None:
        self.rng = rng
        self.figures = figures
        self.cluster = cluster
        self.redis = redis_server
        self.engine = engine
        self.webhooks = webhooks

    def run(self, log: Path, committed: dict[str, datetime], sendable: int) -> None:
        """Inject faults until each was injected and the backlog has (nearly) gone out, or
        until nothing was sent for ``STALL_SECONDS`` (the missing faults then fail the test).

        ``sendable``: how many messages the caps let out in a run.
        """
        pending = list(self.MILESTONES)
        next_kill = self.rng.uniform(*KILL_EVERY)
        stalled = Stall(STALL_SECONDS)
        while not stalled(sent := sent_count(log)):
            progress = sent / sendable
            if not pending and (progress >= 0.95 or settled(self.engine)):
                break
            # A fault that found nothing to act on (no connection open to terminate) is
            # tried again at the next look, never counted as done.
            if pending and progress >= pending[0][1] and self.inject(pending[0][0], committed):
                pending.pop(0)
            if progress >= next_kill and progress < 0.9:
                self.cluster.kill_worker(self.rng.randrange(WORKERS))
                self.figures.kills += 1
                next_kill = progress + self.rng.uniform(*KILL_EVERY)
            self.cluster.keep_alive()
            time.sleep(0.2)
        for n in STOPPERS[:3]:
            self.webhooks.replay(f"stop{n}")  # a late redelivery changes nothing

    def inject(self, fault: str, committed: dict[str, datetime]) -> bool:
        """Inject ``fault``; False when it found nothing to act on."""
        if fault == "health":
            health_out_of_order(self.webhooks)
        elif fault == "stop":
            stop_all(self.webhooks, committed)
        elif fault == "redis":
            self.redis.kill()
            time.sleep(self.rng.uniform(0.2, 1.5))  # Redis stays down a while
            self.redis.start()
            self.figures.redis_restarts += 1
        elif drop_connections(self.engine) > 0:
            self.figures.db_drops += 1
        else:
            return False
        return True


def drop_connections(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    return int(dropped)


def sent_count(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


@pytest.mark.parametrize("seed", SEEDS)
def test_no_duplicate_no_send_after_stop_nothing_lost_under_faults(
    seed: int,
    tmp_path: Path,
    postgres_database: str,
    private_redis: PrivateRedis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    rng = random.Random(seed)
    limiter = "redis" if seed % 2 else "database"
    figures = Figures(seed, limiter)
    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    policy = tmp_path / "healthgate.toml"
    policy.write_text(policy_for(limiter))
    settings = Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        database_url=postgres_database,
        broker_url=private_redis.url,
        redis_url=private_redis.url if limiter == "redis" else None,
        linq_webhook_secret=SecretStr(SECRET),
    )
    settings.data_dir.mkdir(parents=True)
    kills_file = tmp_path / "kills.txt"
    env = environment(settings) | {
        "HEALTHGATE_LEASE_SECONDS": "4",
        "HEALTHGATE_RECONCILE_AFTER_SECONDS": "3",
        "HEALTHGATE_DISPATCH_BATCH": "10",
        "HEALTHGATE_CLAIM_LIMIT": "20",
        "HEALTHGATE_FAULT_SEND_KILL": "0.015",
        "HEALTHGATE_FAULT_TASK_KILL": "0.01",
        "HEALTHGATE_FAULT_KILLS": str(kills_file),
        "HEALTHGATE_FAULT_SEED": str(seed),
    }
    if settings.redis_url:
        env["HEALTHGATE_REDIS_URL"] = settings.redis_url
    hg = Healthgate(settings)
    hg.sync_lines()
    # Given a backlog of thousands of messages over three lines, recipients interleaved
    ids = hg.enqueue_many(
        [
            {"to": recipient(i % RECIPIENTS), "body": f"m{i}", "line": line_of(i % RECIPIENTS)}
            for i in range(MESSAGES)
        ]
    )
    figures.messages = len(ids)
    cluster = Cluster(env, tmp_path)
    committed: dict[str, datetime] = {}
    try:
        with TestClient(create_app(settings), base_url=BASE_URL) as client:
            for n in range(WORKERS):
                cluster.start_worker(n)
            cluster.start_beat()
            # When workers dispatch it while faults are injected at random moments
            webhooks = Webhooks(client)
            chaos = Chaos(rng, figures, cluster, private_redis, engine, webhooks)
            chaos.run(settings.send_log_path, committed, sendable(limiter))
            figures.webhooks_refused = webhooks.refused
            # Then, once faults stop, leases expire and reconciliation runs, all settles
            # (what has not settled when settling stops moving counts as lost)
            settling = Stall(STALL_SECONDS)
            while (left := unsettled(engine)) and not settling(left):
                time.sleep(0.5)
    finally:
        cluster.stop()
        hg.close()

    figures.kills += sent_count(kills_file)
    judge(figures, engine, settings, ids, committed)
    figures.seconds = time.monotonic() - started
    report(figures, capsys)
    assert figures.duplicates == 0
    assert figures.lost == 0
    assert figures.sends_after_opt_out == 0
    assert figures.cap_overruns == 0
    assert figures.kills >= 20
    # Every fault of the schedule was injected (the run followed progress to its end)
    assert figures.redis_restarts == scheduled("redis")
    assert figures.db_drops == scheduled("db")
    assert figures.reconciled >= 1
    if limiter == "database":
        assert figures.caps_reached >= 1, "the binding cap was never reached"
    # And the older CRITICAL reading that arrived after a newer HEALTHY one held nothing
    with engine.connect() as conn:
        held = conn.execute(
            text("SELECT count(*) FROM messages WHERE recipient = ANY(:to) AND state = 'deferred'"),
            {"to": [recipient(n) for n in HEALTH_EVENTS]},
        ).scalar_one()
    engine.dispose()
    assert held == 0


def scheduled(fault: str) -> int:
    """How many times the schedule injects ``fault``."""
    return sum(name == fault for name, _ in Chaos.MILESTONES)


def settled(engine: sqlalchemy.Engine) -> bool:
    """Nothing queued, claimed or sending, and nothing waiting that is due now."""
    return unsettled(engine) == 0


def unsettled(engine: sqlalchemy.Engine) -> int:
    """Messages queued, claimed or sending, or waiting and due now (-1: no answer)."""
    try:
        with engine.connect() as conn:
            busy = conn.execute(
                text(
                    "SELECT count(*) FROM messages "
                    "WHERE state IN ('queued', 'claimed', 'sending') "
                    "OR (state IN ('throttled', 'deferred') "
                    "AND not_before <= now() at time zone 'utc')"
                )
            ).scalar_one()
    except sqlalchemy.exc.OperationalError:
        return -1
    return int(busy)


def judge(
    figures: Figures,
    engine: sqlalchemy.Engine,
    settings: Settings,
    ids: list[str],
    committed: dict[str, datetime],
) -> None:
    """Count duplicates, lost messages, sends after an opt-out and cap overruns."""
    from scheduler.providers.log import read_send_log

    log = read_send_log(settings.send_log_path)
    keys = Counter(record["idempotency_key"] for record in log)
    figures.duplicates = sum(n - 1 for n in keys.values()) + sum(
        1 for record in log if record["idempotency_key"] != record["message_id"]
    )
    with engine.connect() as conn:
        rows = {
            row.id: row
            for row in conn.execute(
                text(
                    "SELECT m.id, m.state, m.last_reason, m.recipient, m.dispatched_at, "
                    "l.number AS line FROM messages m LEFT JOIN lines l ON l.id = m.line_id"
                )
            )
        }
        opted = dict(conn.execute(text("SELECT recipient, opted_out_at FROM opt_outs")).all())
        figures.reconciled = conn.execute(
            text("SELECT count(DISTINCT message_id) FROM decisions WHERE action = 'RECONCILE'")
        ).scalar_one()
        decided: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        for message_id, action, at in conn.execute(
            text("SELECT message_id, action, at FROM decisions ORDER BY id")
        ):
            decided[message_id].append((action, at.replace(tzinfo=UTC)))
    in_log = {record["message_id"]: record for record in log}
    lost = [i for i in ids if i not in rows]
    for message_id in ids:
        row = rows.get(message_id)
        if row is None:
            continue
        resting = row.state in FINAL or (row.state in WAITING and row.last_reason)
        sent_unlogged = row.state == "sent" and message_id not in in_log
        logged_unsent = message_id in in_log and row.state not in {"sent", "needs_review"}
        if not resting or sent_unlogged or logged_unsent:
            lost.append(message_id)
    figures.lost = len(lost) + len(set(in_log) - set(ids))
    assert set(opted) >= {recipient(n) for n in STOPPERS}
    after = []
    for message_id, record in in_log.items():
        opted_at = opted.get(record["recipient"])
        sent_at = datetime.fromisoformat(record["at"])
        if opted_at is None or sent_at <= opted_at.replace(tzinfo=UTC):
            continue
        # Sent after the opt-out's time: allowed only if the decision that sent it (the
        # last SEND or resend before the send) committed before the opt-out was
        # recorded (the call was already under way) and nothing dropped it. A late STOP
        # is dated before it arrives, so sends of that gap are checked too.
        actions = decided[message_id]
        go = [at for action, at in actions if action in ("SEND", "RECONCILE") and at <= sent_at]
        dropped = any(action == "DROP" for action, _ in actions)
        if dropped or not go or max(go) > committed[record["recipient"]]:
            after.append(message_id)
    figures.sends_after_opt_out = len(after)
    figures.cap_overruns, figures.caps_reached = overruns(
        settings, [rows[i] for i in in_log if i in rows]
    )


def overruns(settings: Settings, sent: list[Any]) -> tuple[int, int]:
    """Windows over a cap, and lines at their binding cap, timed by the recorded decisions."""
    policy = load_policy(settings.policy_file)
    per_line: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for row in sent:
        per_line[row.line].append((row.dispatched_at, row.recipient))
    count = reached = 0
    for line, sends in per_line.items():
        caps = policy.caps_for(line)
        times = [at for at, _ in sends]
        first: dict[str, datetime] = {}
        per_recipient: dict[str, list[datetime]] = defaultdict(list)
        for at, to in sorted(sends):
            first.setdefault(to, at)
            per_recipient[to].append(at)
        count += most_in_window(times, MINUTE) > caps.sends_per_minute
        count += most_in_window(times, DAY) > caps.sends_per_day
        count += most_in_window(first.values(), DAY) > caps.new_conversations_per_day
        distinct = most_distinct_in_window(sends, HOUR)
        count += distinct > caps.distinct_recipients_per_hour
        reached += distinct == caps.distinct_recipients_per_hour == BINDING_DISTINCT
        count += sum(
            most_in_window(at_times, MINUTE) > caps.sends_per_recipient_per_minute
            for at_times in per_recipient.values()
        )
    return count, reached


def report(figures: Figures, capsys: pytest.CaptureFixture[str]) -> None:
    """One line of figures on the terminal whatever ``-s`` says, and in the results file."""
    with capsys.disabled():
        print(f"\n{figures.line()}")
    results = os.environ.get("HEALTHGATE_FAULT_RESULTS")
    if results:
        with open(results, "a", encoding="utf-8") as handle:
            handle.write(figures.line() + "\n")
