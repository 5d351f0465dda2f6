"""Dispatch cost against a waiting backlog, and releasing a deferred backlog on recovery.

Both run in this process (one dispatcher, ``healthgate drain``'s loop) against
PostgreSQL and the Redis limiter, with the null provider.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

import redis

from bench.provider import NullProvider
from bench.store import (
    LINE_NUMBERS,
    count_states,
    message_rows,
    seed_chats,
    seed_messages,
)
from scheduler.client import Healthgate
from scheduler.dispatch import drain
from scheduler.runtime import Runtime, utcnow
from scheduler.settings import Settings
from scheduler.store.db import engine_for


def _drain(settings: Settings) -> tuple[float, int]:
    """Seconds for one process to dispatch everything due now, and the decisions taken."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        client.flushdb()  # the benchmark's own database: counters of an earlier point go
        client.close()
    runtime = Runtime.build(settings, providers={"log": NullProvider()})
    try:
        start = time.perf_counter()
        report = drain(runtime)
        seconds = time.perf_counter() - start
    finally:
        runtime.close()
    decided = sum(
        n for outcome, n in report.counts.items() if outcome.isupper() and outcome != "SENT"
    )
    return seconds, decided


def bench_scale_point(settings: Settings, chats: int, waiting: int, due: int) -> dict[str, Any]:
    """Cost of one decision with ``waiting`` messages not yet due and ``due`` due now."""
    now = utcnow()
    engine = engine_for(settings)
    rows = seed_chats(engine, chats, now)
    # The backlog: throttled for an hour, deferred for days, scheduled for tomorrow.
    later = [
        message_rows(
            "t",
            rows,
            waiting // 3,
            "throttled",
            now + timedelta(hours=1),
            now,
            "cap_sends_per_minute",
        ),
        message_rows(
            "h", rows, waiting // 3, "deferred", now + timedelta(hours=72), now, "chat_critical"
        ),
        message_rows(
            "q", rows, waiting - 2 * (waiting // 3), "queued", now + timedelta(days=1), now
        ),
    ]
    seed_messages(engine, itertools.chain(*later))
    seed_messages(engine, message_rows("d", rows, due, "queued", now - timedelta(seconds=1), now))
    engine.dispose()
    seconds, decided = _drain(settings)
    return {
        "waiting": waiting,
        "due": due,
        "decided": decided,
        "seconds": round(seconds, 3),
        "us_per_decision": round(seconds / max(decided, 1) * 1e6, 1),
    }


def bench_recovery(settings: Settings, chats: int, backlog: int, lines: int) -> dict[str, Any]:
    """A ``backlog`` held on CRITICAL lines; every line recovers; time to release and send."""
    now = utcnow()
    engine = engine_for(settings)
    rows = seed_chats(engine, chats, now, spread=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE lines SET reputation = 'CRITICAL'")
    seed_messages(
        engine,
        message_rows(
            "r", rows, backlog, "deferred", now + timedelta(hours=72), now, "line_critical"
        ),
    )
    client = Healthgate(settings)
    start = time.perf_counter()
    for number in LINE_NUMBERS[:lines]:
        client.set_line_health(number, "HEALTHY")
    released_seconds = time.perf_counter() - start
    client.close()
    seconds, decided = _drain(settings)
    states = count_states(engine)
    engine.dispose()
    return {
        "backlog": backlog,
        "released_to_queue_seconds": round(released_seconds, 2),
        "dispatch_seconds": round(seconds, 2),
        "total_seconds": round(released_seconds + seconds, 2),
        "dispatched_per_second": round(states.get("sent", 0) / seconds, 1),
        "decided": decided,
        "states_after": states,
    }
