"""The pure gate alone: ``policies.gate.decide`` per message over a realistic mix of facts."""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from policies.config import load_policy
from policies.content import body_digest
from policies.gate import ChatFacts, LineFacts, MessageFacts, decide
from policies.statuses import ChatHealth, LineReputation, LineStatus
from policies.usage import LineUsage

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

Facts = tuple[MessageFacts, ChatFacts, LineFacts | None, LineUsage]


def _usage(rng: random.Random, recipients: list[str], sends: int) -> LineUsage:
    """A line that sent ``sends`` messages over the last hour to some of ``recipients``."""
    usage = LineUsage()
    digest = body_digest("Shipping update: your order 1 is on its way")
    for i in range(sends):
        at = NOW - timedelta(seconds=rng.uniform(0, 3600))
        usage.record(rng.choice(recipients), at, new_chat=i % 3 == 0, body_hash=digest)
    return usage


def mix(count: int, seed: int = 7) -> list[Facts]:
    """Chats in all four health buckets, lines of every reputation, usage near and far
    from the caps, bodies repeated and not."""
    rng = random.Random(seed)
    recipients = [f"+1415{2_000_000 + i:07d}" for i in range(500)]
    lines = [
        LineFacts(f"+1415555{100 + i:04d}", reputation, status, recovered)
        for i, (reputation, status, recovered) in enumerate(
            [(LineReputation.HEALTHY, LineStatus.ACTIVE, None)] * 7
            + [
                (LineReputation.HEALTHY, LineStatus.ACTIVE, NOW - timedelta(hours=3)),
                (LineReputation.AT_RISK, LineStatus.ACTIVE, None),
                (LineReputation.CRITICAL, LineStatus.ACTIVE, None),
                (LineReputation.HEALTHY, LineStatus.FLAGGED, None),
            ]
        )
    ]
    usages = [_usage(rng, recipients, rng.choice([0, 20, 200, 1200])) for _ in lines]
    healths = [ChatHealth.HEALTHY] * 14 + [ChatHealth.AT_RISK] * 3 + [ChatHealth.CRITICAL] * 2
    digests = [body_digest(f"{w} update: your order 1") for w in ("Shipping", "Billing", "Hi")]
    facts: list[Facts] = []
    for _ in range(count):
        index = rng.randrange(len(lines))
        health = rng.choice([*healths, ChatHealth.OPTED_OUT])
        is_new = rng.random() < 0.3
        unanswered = tuple(NOW - timedelta(hours=h) for h in range(rng.choice([0, 0, 1, 2])))
        facts.append(
            (
                MessageFacts(
                    recipient=rng.choice(recipients),
                    expires_at=NOW + timedelta(hours=rng.choice([1, 48]))
                    if rng.random() < 0.2
                    else None,
                    held_since=NOW - timedelta(hours=rng.choice([1, 80]))
                    if rng.random() < 0.1
                    else None,
                    may_reroute=is_new and rng.random() < 0.5,
                    body_hash=rng.choice(digests),
                ),
                ChatFacts(
                    health=health,
                    recipient_opted_out=rng.random() < 0.02,
                    is_new=is_new,
                    unanswered=unanswered if health is ChatHealth.AT_RISK else (),
                    same_body_sent=unanswered[:1],
                ),
                None if rng.random() < 0.01 else lines[index],
                usages[index],
            )
        )
    return facts


def bench_gate(policy_file: Path, evaluations: int) -> dict[str, Any]:
    """Median and p99 of one ``decide`` call, in microseconds."""
    policy = load_policy(policy_file)
    facts = mix(evaluations)
    for item in facts[:1000]:  # warm up
        decide(*item, policy, NOW)
    timings: list[float] = []
    actions: dict[str, int] = {}
    clock = time.perf_counter_ns
    for item in facts:
        start = clock()
        decision = decide(*item, policy, NOW)
        timings.append((clock() - start) / 1000)
        actions[decision.action.value] = actions.get(decision.action.value, 0) + 1
    timings.sort()
    return {
        "evaluations": evaluations,
        "median_us": round(statistics.median(timings), 2),
        "p99_us": round(timings[int(len(timings) * 0.99) - 1], 2),
        "max_us": round(timings[-1], 2),
        "actions": actions,
    }
