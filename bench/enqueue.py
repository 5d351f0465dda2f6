"""Enqueue through the public API on PostgreSQL: one message a call, and in bulk."""

from __future__ import annotations

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
    settings: Settings, single: int, bulk: int, chunk: int, lines: int
) -> dict[str, Any]:
    """Messages per second for ``enqueue`` and ``enqueue_many``."""
    client = Healthgate(settings)
    try:
        start = time.perf_counter()
        for i in range(single):
            client.enqueue(**_message(i, lines))
        single_seconds = time.perf_counter() - start
        batch = [_message(single + i, lines) for i in range(bulk)]
        start = time.perf_counter()
        for offset in range(0, bulk, chunk):
            client.enqueue_many(batch[offset : offset + chunk])
        bulk_seconds = time.perf_counter() - start
    finally:
        client.close()
    return {
        "single_messages": single,
        "single_per_second": round(single / single_seconds, 1),
        "bulk_messages": bulk,
        "bulk_chunk": chunk,
        "bulk_per_second": round(bulk / bulk_seconds, 1),
    }
