"""How much each benchmark runs: ``smoke`` keeps CI quick, ``full`` is the one reported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """The amounts of one benchmark run."""

    name: str
    #: ``enqueue`` calls, one message each.
    enqueue_single: int
    #: Messages given to ``enqueue_many``, in chunks of ``enqueue_chunk``, in each of
    #: ``enqueue_rounds`` rounds.
    enqueue_bulk: int
    enqueue_chunk: int
    enqueue_rounds: int
    #: Messages given to ``enqueue_many`` with no line named (the router picks).
    enqueue_routed: int
    #: Pure gate evaluations timed one by one.
    gate_evaluations: int
    #: Messages through real workers, gated and baseline each.
    end_to_end: int
    #: Messages waiting (not due) at each scale point, and those dispatched at each.
    scale_waiting: tuple[int, ...]
    scale_due: int
    #: The deferred backlog released when its line recovers.
    recovery: int
    #: Starts of ``healthgate --help`` (and of bare Python beside each).
    cli_runs: int = 10
    #: Messages of the simulator's world, and the days they span (two policies each).
    simulate_messages: int = 0
    simulate_days: float = 1
    lines: int = 10
    chats: int = 5000


SIZES = {
    "smoke": Size(
        name="smoke",
        enqueue_single=50,
        enqueue_bulk=500,
        enqueue_chunk=250,
        enqueue_rounds=1,
        enqueue_routed=200,
        gate_evaluations=2_000,
        end_to_end=300,
        scale_waiting=(1_000, 10_000),
        scale_due=200,
        recovery=500,
        cli_runs=3,
        chats=500,
        simulate_messages=100,
        simulate_days=0.05,
    ),
    "full": Size(
        name="full",
        enqueue_single=1_000,
        enqueue_bulk=20_000,
        enqueue_chunk=1_000,
        enqueue_rounds=5,
        enqueue_routed=2_000,
        gate_evaluations=50_000,
        end_to_end=20_000,
        scale_waiting=(10_000, 1_000_000),
        scale_due=5_000,
        recovery=100_000,
        cli_runs=15,
        # A part of the goal's world (30 days, 100,000 messages) that runs in minutes:
        # BENCH_SIMULATE_MESSAGES=100000 BENCH_SIMULATE_DAYS=30 runs the whole of it.
        simulate_messages=10_000,
        simulate_days=3,
    ),
}
