"""Run policies side by side on one scenario: a world, a trace file or the history."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.config import Policy, parse_policy
from scheduler.simulate.engine import SIMULATED, Scenario, Simulation
from scheduler.simulate.outcome import Outcome
from scheduler.simulate.provider import Flag, WorldModel
from scheduler.simulate.traffic import enqueues
from scheduler.simulate.world import World


@dataclass(frozen=True)
class Candidate:
    """A policy to simulate, and the name the report gives it."""

    name: str
    policy: Policy


def world_scenario(world: World, batch: int = 400) -> Scenario:
    """The world's month: its enqueues streamed, its provider model built afresh a run."""

    def model(flagged: Callable[[Flag], None]) -> WorldModel:
        return WorldModel(world, flagged)

    return Scenario(
        world.world.start, world.world.end, world.world.tick, lambda: enqueues(world), model, batch
    )


def on_world_lines(policy: Policy, world: World, name: str) -> Policy:
    """``policy`` with the world's lines (a line the policy names keeps its own caps)."""
    data = policy.model_dump(mode="json", exclude_none=True)
    own = {line["number"]: line for line in data["lines"]}
    data["lines"] = [
        {**own.get(line.number, {}), "number": line.number, "provider": SIMULATED}
        for line in world.lines
    ]
    for line in data["lines"]:
        line.pop("api_key_env", None)
    return parse_policy(data, name)


def on_simulated_lines(policy: Policy, name: str) -> Policy:
    """``policy`` with its own lines, every one sending through the simulated provider."""
    data = policy.model_dump(mode="json", exclude_none=True)
    for line in data["lines"]:
        line["provider"] = SIMULATED
        line.pop("api_key_env", None)
    return parse_policy(data, name)


def compare(
    candidates: Sequence[Candidate],
    scenario: Scenario,
    folder: Path,
    progress: Callable[[str, float], None] | None = None,
    parallel: bool = True,
) -> list[Outcome]:
    """Each candidate through ``scenario``; in parallel processes when there are cores.

    Each run has its own store and its own provider model, fed the same trace.
    """
    progress = progress or (lambda name, share: None)
    runs = [
        Simulation(c.name, c.policy, scenario, folder / f"run{i}") for i, c in enumerate(candidates)
    ]
    if not parallel or len(runs) < 2 or (os.cpu_count() or 1) < 2:
        outcomes = []
        for run in runs:
            run.progress = _named(progress, run.name)
            outcomes.append(run.run())
        return outcomes
    return _in_processes(runs, progress)


def _named(progress: Callable[[str, float], None], name: str) -> Callable[[float], None]:
    return lambda share: progress(name, share)


def _in_processes(
    runs: Sequence[Simulation], progress: Callable[[str, float], None]
) -> list[Outcome]:
    """One forked process a run (the scenario's trace and model are built in each)."""
    context = multiprocessing.get_context("fork")
    shares = [context.Value("d", 0.0) for _ in runs]
    results: Any = context.Queue()
    processes = [
        context.Process(target=_child, args=(i, run, shares[i], results), daemon=True)
        for i, run in enumerate(runs)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, Outcome] = {}
    try:
        while len(outcomes) < len(runs):
            try:
                index, outcome = results.get(timeout=0.2)
            except Exception:  # queue.Empty: report progress and look again
                for run, share in zip(runs, shares, strict=True):
                    progress(run.name, share.value)
                dead = [
                    p for i, p in enumerate(processes) if i not in outcomes and not p.is_alive()
                ]
                if dead and results.empty():
                    raise RuntimeError("a simulation process ended without a result") from None
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            outcomes[index] = outcome
            progress(runs[index].name, 1.0)
    finally:
        for process in processes:
            process.join(timeout=5)
    return [outcomes[i] for i in range(len(runs))]


def _child(index: int, run: Simulation, share: Any, results: Any) -> None:
    def report(value: float) -> None:
        share.value = value

    run.progress = report
    try:
        results.put((index, run.run()))
    except BaseException as exc:
        results.put((index, exc))
