"""Enqueue through the public API on PostgreSQL: one message a call, and in bulk."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.store import LINE_NUMBERS
from scheduler.client import Healthgate
from scheduler.settings import Settings


def _message(i: int, lines: int) -> dict[str, Any]:
    # Each message to a new recipient on a named line, as an application sending a
    # campaign from its numbers would.
    return {
        "to": f"+1415{3_000_000 + i:07d}",
        "body": f"Your order {i} has shipped",
        "line": LINE_NUMBERS[i % lines],
        "idempotency_key": f"order-{i}",
    }


def bench_enqueue(
    settings: Settings, single: int, bulk: int, chunk: int, lines: int, rounds: int
) -> dict[str, Any]:
    """Messages per second for ``enqueue``, and for ``enqueue_many`` in ``rounds`` rounds
    of ``bulk`` new messages (the median is the result: one round lasts about a second,
    and a 2-core machine shared with others varies by a fifth from one to the next)."""
    client = Healthgate(settings)
    try:
        start = time.perf_counter()
        for i in range(single):
            client.enqueue(**_message(i, lines))
        single_seconds = time.perf_counter() - start
        per_round: list[float] = []
        for round_ in range(rounds):
            first = single + round_ * bulk
            batch = [_message(first + i, lines) for i in range(bulk)]
            start = time.perf_counter()
            for offset in range(0, bulk, chunk):
                client.enqueue_many(batch[offset : offset + chunk])
            per_round.append(round(bulk / (time.perf_counter() - start), 1))
    finally:
        client.close()
    return {
        "single_messages": single,
        "single_per_second": round(single / single_seconds, 1),
        "bulk_messages": bulk,
        "bulk_chunk": chunk,
        "bulk_rounds": per_round,
        "bulk_per_second": statistics.median(per_round),
    }
