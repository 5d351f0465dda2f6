"""Messages decided and dispatched per second by real workers, next to bare Celery."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import redis

from bench import baseline
from bench.processes import RssSampler, celery, stop, worker
from bench.provider import IMPORT_PATH
from bench.store import LINE_NUMBERS, count_states, message_rows, seed_chats, seed_messages
from scheduler import constants
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.db import engine_for

#: Worker processes, as in the baseline (and the 2-core machine the goal was set on).
PROCESSES = 2
#: Beat's tick: a tick runs on the same pool as the dispatches, so a very short one
#: takes a share of it; each tick claims up to the claim limit (2,000 here).
TICK_SECONDS = 1.0
DEADLINE_SECONDS = 900.0


def _wait_drained(remaining: Callable[[], int], total: int) -> tuple[float, float]:
    """When the drain of ``total`` messages began and ended (monotonic seconds): the
    last moment all were still waiting, and the first moment none was, so that a drain
    shorter than one poll (one batch, in the smoke size) still has a length."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    waiting_all = time.monotonic()
    while True:
        left = remaining()
        moment = time.monotonic()
        if left == total:
            waiting_all = moment
        elif left == 0:
            return waiting_all, moment
        if moment > deadline:
            raise RuntimeError(
                f"{left} of {total} messages still waiting after {DEADLINE_SECONDS} s"
            )
        time.sleep(0.02)


def _measured(pid: int, remaining: Callable[[], int], count: int) -> dict[str, Any]:
    """Messages a second while a worker (``pid``) drains ``count``, and its memory then."""
    with RssSampler(pid) as sampler:
        origin = time.monotonic()
        first, last = _wait_drained(remaining, count)
    seconds = last - first
    return {
        "messages": count,
        "seconds": round(seconds, 2),
        "per_second": round(count / seconds, 1),
        "memory": sampler.summary(lambda t: first - origin <= t <= last - origin),
    }


def _flush(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url)
    client.flushdb()  # the benchmark's own Redis database
    return client


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHGATE_")}
    env.update(
        HEALTHGATE_DATABASE_URL=settings.database_url or "",
        HEALTHGATE_BROKER_URL=settings.broker_url or "",
        HEALTHGATE_REDIS_URL=settings.redis_url or "",
        HEALTHGATE_POLICY_FILE=str(settings.policy_file),
        HEALTHGATE_DATA_DIR=str(settings.data_dir),
        HEALTHGATE_TICK_SECONDS=str(TICK_SECONDS),
        HEALTHGATE_DISPATCH_BATCH=str(settings.dispatch_batch),
        HEALTHGATE_CLAIM_LIMIT=str(settings.claim_limit),
        HEALTHGATE_PROVIDERS=json.dumps({"log": IMPORT_PATH}),
    )
    return env


def bench_gated(settings: Settings, count: int, chats: int) -> dict[str, Any]:
    """``count`` due messages over ``chats`` chats of every health, through worker and beat."""
    engine = engine_for(settings)
    now = utcnow()
    rows = seed_chats(engine, chats, now)
    seed_messages(engine, message_rows("e", rows, count, "queued", now, now))
    client = _flush(settings.broker_url or "")
    busy = "SELECT count(*) FROM messages WHERE state IN ('queued', 'claimed', 'sending')"

    def remaining() -> int:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(busy).scalar_one())

    env = worker_env(settings)
    pool = worker("tasks", constants.DEFAULT_QUEUE, env, PROCESSES)
    beat = celery("tasks", "beat", env=env)
    try:
        figures = _measured(pool.pid, remaining, count)
    finally:
        stop(beat)
        stop(pool)
        client.close()
    with engine.connect() as conn:
        decisions = int(conn.exec_driver_sql("SELECT count(*) FROM decisions").scalar_one())
    states = count_states(engine)
    engine.dispose()
    return {
        **figures,
        "states_after": states,
        "decision_records": decisions,
        "dispatch_batch": settings.dispatch_batch,
        "tick_seconds": TICK_SECONDS,
    }


def bench_baseline(broker_url: str, count: int) -> dict[str, Any]:
    """``count`` bare tasks published first, then consumed by a worker of the same size."""
    client = _flush(broker_url)
    app = baseline.create_app(broker_url)
    task = app.tasks[baseline.TASK]
    with app.producer_or_acquire() as producer:
        for i in range(count):
            task.apply_async(
                args=(f"msg_{i}", LINE_NUMBERS[i % 10], f"+1415{2_000_000 + i:07d}", "hi"),
                producer=producer,
            )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHGATE_")}
    env["BENCH_BROKER_URL"] = broker_url
    pool = worker("bench.baseline", baseline.QUEUE, env, PROCESSES)
    try:
        return _measured(pool.pid, lambda: int(client.llen(baseline.QUEUE)), count)
    finally:
        stop(pool)
        client.close()
