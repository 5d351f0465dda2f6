"""`healthgate simulate`'s speed: messages simulated a second for two policies side by side,
against the pure gate's own ``decide()`` rate measured in the same run."""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.gate import bench_gate
from bench.store import write_policy
from policies.config import load_policy, parse_policy
from scheduler.simulate.run import Candidate, compare, on_world_lines, world_scenario
from scheduler.simulate.world import World, parse_world

#: Ten minutes before the first wave, so a short world has one.
START = datetime(2026, 11, 1, 7, 50, tzinfo=UTC)


def world(messages: int, days: float, lines: int) -> World:
    """``messages`` over ``days`` on ``lines`` lines: a daily wave over the working day,
    and recipients who reply now and then."""
    waves = max(int(days), 1)
    return parse_world(
        {
            "world": {"start": START, "days": days, "seed": 11},
            "providers": [
                {
                    "name": "linq",
                    "line": {
                        "at_risk_sends_per_minute": 25,
                        "flag_sends_per_minute": 60,
                        "at_risk_new_conversations_per_day": 250,
                    },
                }
            ],
            "lines": [
                {"number": f"+1415555{100 + i:04d}", "provider": "linq"} for i in range(lines)
            ],
            "recipients": {
                "count": 20_000,
                "segments": [
                    {"name": "engaged", "share": 0.3, "reply_probability": 0.4},
                    {"name": "cold", "share": 0.7, "reply_probability": 0.03},
                ],
            },
            "traffic": {
                "waves": [
                    {
                        "name": "daily",
                        "at": "08:00:00",
                        "messages": messages // waves,
                        "spread_minutes": min(days, 1) * 10 * 60,
                        "body": [f"Update {i}: your order is on its way" for i in range(8)],
                        "expires_hours": 24,
                    }
                ]
            },
        },
        "bench world",
    )


def bench_simulate(root: Path, messages: int, days: float, lines: int) -> dict[str, Any]:
    """Both policies through one world in parallel; messages a second and the ratio to
    ``decide()``'s rate, and each run's memory first and last quarter."""
    found = world(messages, days, lines)
    current_file = write_policy(root / "simulate-current.toml", lines)
    current = on_world_lines(load_policy(current_file), found, "current")
    data = current.model_dump(mode="json", exclude_none=True)
    data["caps"]["sends_per_minute"] = 10
    candidate = parse_policy(data, "candidate")
    began, cpu = time.perf_counter(), _cpu_seconds()
    outcomes = compare(
        [Candidate("current", current), Candidate("candidate", candidate)],
        world_scenario(found),
        root / "simulate",
    )
    wall = time.perf_counter() - began
    # On a machine others share, CPU time says what the wall clock cannot.
    cpu = _cpu_seconds() - cpu
    simulated = sum(o.totals["enqueued"] for o in outcomes)
    gate = bench_gate(current_file, 20_000)
    decide_per_second = 1e6 / gate["median_us"]
    per_second = simulated / wall
    return {
        "messages": simulated,
        "days": days,
        "lines": lines,
        "wall_seconds": round(wall, 2),
        "per_second": round(per_second, 1),
        "cpu_seconds": round(cpu, 2),
        "per_cpu_second": round(simulated / cpu, 1) if cpu else None,
        "decisions": sum(o.totals["decisions"] for o in outcomes),
        "decide_per_second": round(decide_per_second),
        "ratio_to_decide": round(per_second / decide_per_second, 5),
        "memory": [_memory(o.memory) for o in outcomes],
        "summaries": {o.name: o.summary() for o in outcomes},
    }


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _memory(samples: list[float]) -> dict[str, Any]:
    quarter = max(len(samples) // 4, 1)
    first = sum(samples[:quarter]) / quarter if samples else 0.0
    last = sum(samples[-quarter:]) / quarter if samples else 0.0
    return {
        "first_quarter_mib": round(first, 1),
        "last_quarter_mib": round(last, 1),
        "growth_percent": round((last - first) / first * 100, 1) if first else None,
    }
