"""What `healthgate simulate` does, between reading its options and printing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from policies.config import load_policy
from scheduler.runtime import utcnow
from scheduler.settings import Settings
from scheduler.simulate import report
from scheduler.simulate.engine import Scenario, scratch
from scheduler.simulate.history import history
from scheduler.simulate.outcome import Outcome
from scheduler.simulate.run import (
    Candidate,
    compare,
    on_simulated_lines,
    on_world_lines,
    world_scenario,
)
from scheduler.simulate.trace import read_trace, when, write_trace
from scheduler.simulate.world import WorldFileError, load_world
from scheduler.store.db import engine_for, read_sessions

#: Names of the two policies in the report.
CURRENT, CANDIDATE = "current", "candidate"


def prepare(
    settings: Settings,
    *,
    world: Path | None,
    trace: Path | None,
    since: timedelta | None,
    policy: Path,
    candidate: Path | None,
    days: float | None = None,
) -> tuple[Scenario, dict[str, Any], list[Candidate]]:
    """The scenario, a description of its source, and the policies on its lines."""
    files = [(CURRENT, policy)] + ([(CANDIDATE, candidate)] if candidate else [])
    loaded = [(name, load_policy(path)) for name, path in files]
    if world is not None:
        found = load_world(world)
        if days is not None and days < found.world.days:
            found = found.model_copy(
                update={"world": found.world.model_copy(update={"days": days})}
            )
        scenario = world_scenario(found)
        source = {"kind": "world", "name": str(world)}
        policies = [
            Candidate(n, on_world_lines(p, found, str(path)))
            for (n, p), (_, path) in zip(loaded, files, strict=True)
        ]
    else:
        policies = [
            Candidate(n, on_simulated_lines(p, str(path)))
            for (n, p), (_, path) in zip(loaded, files, strict=True)
        ]
        if trace is not None:
            scenario = _trace_scenario(trace)
            source = {"kind": "trace", "name": str(trace)}
        else:
            assert since is not None
            scenario = _history_scenario(settings, loaded[0][1], since)
            source = {"kind": "history", "name": f"the store, last {since}"}
    source.update(start=scenario.start.isoformat(), end=scenario.end.isoformat())
    return scenario, source, policies


def _trace_scenario(path: Path) -> Scenario:
    """A trace file's span (read once to find it; each run reads it again, streaming)."""
    first = last = None
    for event in read_trace(path):
        moment = when(event)
        first = first or moment
        last = moment
    if first is None or last is None:
        raise WorldFileError(str(path), "", "has no events")
    return Scenario(
        first, last + timedelta(hours=1), timedelta(seconds=2), lambda: read_trace(path)
    )


def _history_scenario(settings: Settings, policy: Any, since: timedelta) -> Scenario:
    engine = engine_for(settings)
    sessions = read_sessions(engine)
    end = utcnow()
    start = end - since
    return Scenario(
        start,
        end,
        settings.tick,
        lambda: history(sessions, policy, start, end),
    )


def save(scenario: Scenario, path: Path) -> int:
    """Write the scenario's trace (enqueues and recorded signals) as JSON lines."""
    with open(path, "w", encoding="utf-8") as handle:
        return write_trace(scenario.trace(), handle)


def run(
    scenario: Scenario, policies: list[Candidate], console: Console, parallel: bool = True
) -> list[Outcome]:
    """Every policy through the scenario, with a progress bar a policy."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with scratch() as folder, Progress(*columns, console=console, transient=True) as bar:
        tasks = {c.name: bar.add_task(f"simulating {c.name}", total=1.0) for c in policies}

        def moved(name: str, share: float) -> None:
            bar.update(tasks[name], completed=share)

        return compare(policies, scenario, Path(folder), moved, parallel)


def write(
    folder: Path,
    outcomes: list[Outcome],
    policies: list[Any],
    source: dict[str, Any],
    plots: bool,
) -> dict[str, Path]:
    return report.write(folder, outcomes, policies, source, with_plots=plots)


def summary_table(outcomes: list[Outcome]) -> Table:
    table = Table("measure", *(o.name for o in outcomes))
    summaries = [o.summary() for o in outcomes]
    for key, label, _ in report.ROWS:
        table.add_row(label, *(report.cell(s.get(key)) for s in summaries))
    return table
