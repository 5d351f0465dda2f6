"""Enqueue through the public API on PostgreSQL, each way next to its limit in the same run.

- one message a call, beside a bare Celery ``apply_async`` publish to the same Redis;
- ``enqueue_many`` on a named line, beside a ``COPY`` of the same rows into a scratch
  table of the messages table's shape (and, for reference, one with its indexes too),
  rounds interleaved;
- ``enqueue_many`` routed (``line=None``), beside the named-line rate, and how evenly it
  spread its new recipients over equally healthy lines.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
import sqlalchemy

from bench import baseline
from bench.store import LINE_NUMBERS, copy_rows, naive
from policies.content import body_digest
from scheduler.client import Healthgate
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.store.db import engine_for

#: The scratch tables the COPY baselines write: the messages table's columns (its shape:
#: the limit the goal is set against), and the same with the table's indexes too.
SCRATCH = "bench_copy_messages"
SCRATCH_INDEXED = "bench_copy_messages_indexed"
COPY_COLUMNS = (
    "id, idempotency_key, line_id, chat_id, pinned, recipient, body, body_hash, state, "
    "not_before, attempts, last_code, last_reason, created_at, updated_at"
)


def _message(i: int, lines: int, routed: bool = False) -> dict[str, Any]:
    # Each message to a new recipient on a named line, as an application sending a
    # campaign from its numbers would (or left to the router).
    return {
        "to": f"+1415{3_000_000 + i:07d}",
        "body": f"Your order {i} has shipped",
        "line": None if routed else LINE_NUMBERS[i % lines],
        "idempotency_key": f"order-{i}",
    }


def bench_publish(broker_url: str, count: int) -> float:
    """Bare Celery ``apply_async`` publishes a second: the floor a single enqueue is set
    against (one message, one call, into the same Redis). The queue is emptied after."""
    app = baseline.create_app(broker_url)
    task = app.tasks[baseline.TASK]
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(count):
            task.apply_async(
                args=(f"msg_{i}", LINE_NUMBERS[i % 10], f"+1415{2_000_000 + i:07d}", "hi"),
                producer=producer,
            )
    seconds = time.perf_counter() - start
    client = redis.Redis.from_url(broker_url)
    client.delete(baseline.QUEUE)
    client.close()
    return count / seconds


def _copy_rows(batch: Sequence[dict[str, Any]], line_ids: dict[str, int]) -> list[tuple[Any, ...]]:
    """The rows enqueue_many stores for ``batch``, ready for COPY (chat ids made up: the
    scratch table has no foreign keys)."""
    now = naive(utcnow())
    return [
        (
            f"msg_{uuid.uuid4().hex}",
            m["idempotency_key"],
            line_ids[m["line"]],
            i + 1,
            True,
            m["to"],
            m["body"],
            body_digest(m["body"]),
            "queued",
            now,
            0,
            "enqueued",
            "enqueued",
            now,
            now,
        )
        for i, m in enumerate(batch)
    ]


def _copy_seconds(
    engine: sqlalchemy.Engine, table: str, rows: list[tuple[Any, ...]], chunk: int
) -> float:
    """Seconds to COPY ``rows`` into an emptied scratch table, ``chunk`` rows a commit."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {table}")
    statement = f"COPY {table} ({COPY_COLUMNS}) FROM STDIN"
    start = time.perf_counter()
    for offset in range(0, len(rows), chunk):
        copy_rows(engine, statement, rows[offset : offset + chunk])
    return time.perf_counter() - start


def bench_enqueue(
    settings: Settings,
    single: int,
    bulk: int,
    chunk: int,
    lines: int,
    rounds: int,
    routed: int,
) -> dict[str, Any]:
    """Messages per second for each way to enqueue, and its ratio to the limit measured
    beside it. Bulk runs ``rounds`` rounds of ``bulk`` new messages, each after a COPY
    round of the same rows, and reports medians (a 2-core machine shared with others
    varies by a fifth from one second to the next)."""
    engine = engine_for(settings)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {SCRATCH}, {SCRATCH_INDEXED}")
        conn.exec_driver_sql(f"CREATE TABLE {SCRATCH} (LIKE messages INCLUDING DEFAULTS)")
        conn.exec_driver_sql(f"CREATE TABLE {SCRATCH_INDEXED} (LIKE messages INCLUDING ALL)")
        found = conn.exec_driver_sql("SELECT number, id FROM lines").all()
        line_ids: dict[str, int] = {number: id_ for number, id_ in found}
    client = Healthgate(settings)
    try:
        publish = bench_publish(settings.broker_url or "", single)
        start = time.perf_counter()
        for i in range(single):
            client.enqueue(**_message(i, lines))
        single_rate = single / (time.perf_counter() - start)
        per_round: list[float] = []
        copy_round: list[float] = []
        indexed_round: list[float] = []
        for round_ in range(rounds):
            first = single + round_ * bulk
            batch = [_message(first + i, lines) for i in range(bulk)]
            rows = _copy_rows(batch, line_ids)
            copy_round.append(round(bulk / _copy_seconds(engine, SCRATCH, rows, chunk), 1))
            indexed = _copy_seconds(engine, SCRATCH_INDEXED, rows, chunk)
            indexed_round.append(round(bulk / indexed, 1))
            start = time.perf_counter()
            for offset in range(0, bulk, chunk):
                client.enqueue_many(batch[offset : offset + chunk])
            per_round.append(round(bulk / (time.perf_counter() - start), 1))
        first = single + rounds * bulk
        batch = [_message(first + i, lines, routed=True) for i in range(routed)]
        start = time.perf_counter()
        for offset in range(0, routed, chunk):
            client.enqueue_many(batch[offset : offset + chunk])
        routed_rate = routed / (time.perf_counter() - start)
    finally:
        client.close()
    spread = _spread(engine, [m["idempotency_key"] for m in batch], len(line_ids))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {SCRATCH}, {SCRATCH_INDEXED}")
    engine.dispose()
    bulk_rate = statistics.median(per_round)
    copy_rate = statistics.median(copy_round)
    return {
        "single_messages": single,
        "single_per_second": round(single_rate, 1),
        "publish_per_second": round(publish, 1),
        "single_vs_publish": round(single_rate / publish, 3),
        "bulk_messages": bulk,
        "bulk_chunk": chunk,
        "bulk_rounds": per_round,
        "bulk_per_second": bulk_rate,
        "copy_rounds": copy_round,
        "copy_per_second": copy_rate,
        "bulk_vs_copy": round(bulk_rate / copy_rate, 3),
        "copy_indexed_per_second": statistics.median(indexed_round),
        "bulk_vs_copy_indexed": round(bulk_rate / statistics.median(indexed_round), 3),
        "routed_messages": routed,
        "routed_per_second": round(routed_rate, 1),
        "routed_vs_named": round(routed_rate / bulk_rate, 3),
        "routed_spread": spread,
    }


def _spread(engine: sqlalchemy.Engine, keys: list[str], lines: int) -> dict[str, Any]:
    """How the routed messages fell over the lines: each line's count, and the largest
    share over the smallest (a line that took none makes it infinite, shown as null)."""
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT l.number FROM messages m JOIN lines l ON l.id = m.line_id "
            "WHERE m.idempotency_key = ANY(%s)",
            (keys,),
        ).scalars()
        counts = Counter(found)
    shares = [counts.get(number, 0) for number in LINE_NUMBERS[:lines]]
    return {
        "per_line": dict(sorted(counts.items())),
        "largest_over_smallest": round(max(shares) / min(shares), 2) if min(shares) else None,
    }
