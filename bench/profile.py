"""Where one dispatcher's time goes: ``python -m bench.profile``.

One process drains ``--messages`` due messages (PostgreSQL, the Redis limiter, batches of
``--batch``, every cap at the highest a policy may set, so none comes near) under
cProfile, and prints the time of each stage of a batch, the functions that cost most,
and how many Redis replies were parsed. Needs ``BENCH_POSTGRES_URL`` and
``BENCH_REDIS_URL`` as ``python -m bench`` does (the Redis database is flushed).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from bench.provider import NullProvider
from bench.sizes import SIZES
from bench.store import message_rows, seed_chats, seed_messages
from policies.config import CAP_MAXIMA
from scheduler.dispatch import drain
from scheduler.runtime import Runtime, utcnow
from scheduler.store.db import engine_for

#: The stages of a batch, as (label, file suffix, function name) in pstats' terms.
STAGES = (
    ("load_batch", "dispatch/batch.py", "load_batch"),
    ("  limiter windows read", "limits/redis.py", "windows"),
    ("_propose (the gate, reroutes)", "dispatch/gating.py", "_propose"),
    ("_reserve_all", "dispatch/gating.py", "_reserve_all"),
    ("  limiter hit_many", "limits/redis.py", "hit_many"),
    ("moves.write (the batch's rows)", "store/transitions.py", "write"),
    ("send_batch", "dispatch/sending.py", "send_batch"),
    ("  record_sent", "dispatch/sending.py", "record_sent"),
    ("claim_due", "dispatch/claims.py", "claim_due"),
)


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each stage (0 for a stage the code no longer has)."""
    found = {label: 0.0 for label, _, _ in STAGES}
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (path, _, name), (_, _, _, cumulative, _) in table.items():
        for label, suffix, function in STAGES:
            if name == function and path.endswith(suffix):
                found[label] += cumulative
    return found


def redis_replies(stats: pstats.Stats) -> int:
    """How many Redis replies were parsed (calls of redis-py's reply reader)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return sum(
        calls
        for (path, _, name), (_, calls, _, _, _) in table.items()
        if name == "read_response" and "redis" in path and "_parsers" in path
    )


def profile(
    messages: int, batch: int, chats: int, lines: int, top: int, plain: bool = False
) -> dict[str, Any]:
    from bench.run import settings_for

    caps = dict(CAP_MAXIMA)
    size = replace(SIZES["smoke"], lines=lines)
    with tempfile.TemporaryDirectory(prefix="healthgate-profile-") as tmp:
        os.environ["BENCH_DISPATCH_BATCH"] = str(batch)
        settings = settings_for(Path(tmp), "profile", size, caps)
        engine = engine_for(settings)
        now = utcnow()
        rows = seed_chats(engine, chats, now, spread=False)
        seed_messages(engine, message_rows("p", rows, messages, "queued", now, now))
        engine.dispose()
        client = redis.Redis.from_url(settings.redis_url or "")
        client.flushdb()  # the benchmark's own database
        client.close()
        runtime = Runtime.build(settings, providers={"log": NullProvider()})
        profiler = cProfile.Profile()
        try:
            start = time.perf_counter()
            if not plain:
                profiler.enable()
            report = drain(runtime, batch=batch)
            profiler.disable()
            seconds = time.perf_counter() - start
        finally:
            runtime.close()
    found: dict[str, Any] = {
        "messages": messages,
        "batch": batch,
        "seconds": round(seconds, 2),
        "per_second": round(messages / seconds, 1),
        "counts": report.counts,
    }
    if plain:
        return {**found, "stages": {}, "redis_replies": 0, "top": ""}
    stats = pstats.Stats(profiler)
    listing = io.StringIO()
    pstats.Stats(profiler, stream=listing).sort_stats("tottime").print_stats(top)
    return {
        **found,
        "stages": {k: round(v, 2) for k, v in stage_seconds(stats).items()},
        "redis_replies": redis_replies(stats),
        "top": listing.getvalue(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--chats", type=int, default=5_000)
    parser.add_argument("--lines", type=int, default=10)
    parser.add_argument("--top", type=int, default=25, help="functions listed, by own time")
    parser.add_argument("--plain", action="store_true", help="time the drain, no profiler")
    args = parser.parse_args(argv)
    os.environ.setdefault(
        "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    found = profile(args.messages, args.batch, args.chats, args.lines, args.top, args.plain)
    print(
        f"{found['messages']:,} messages, batch {found['batch']}: {found['seconds']} s "
        f"{'(no profiler)' if args.plain else 'under the profiler'} "
        f"({found['per_second']:,.0f} msg/s); {found['redis_replies']:,} Redis "
        f"replies parsed; {found['counts']}"
    )
    if args.plain:
        return found
    for label, seconds in found["stages"].items():
        print(f"{label:<34} {seconds:>7.2f} s")
    print(found["top"])
    return found


if __name__ == "__main__":
    main()
