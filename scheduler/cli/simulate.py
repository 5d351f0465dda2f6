"""`healthgate simulate`: try a policy, and a candidate beside it, on a month of traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from policies.errors import InvalidInput
from scheduler.cli.base import app, err, out, parse_duration, print_json


@app.command("simulate")
def simulate(
    world: Path | None = typer.Option(
        None, "--world", help="A synthetic world (TOML; see docs/simulate/world.toml)."
    ),
    trace: Path | None = typer.Option(
        None, "--trace", help="A trace file (JSON lines, as --save-trace writes)."
    ),
    from_history: bool = typer.Option(
        False, "--from-history", help="Rebuild the trace from this store's history."
    ),
    since: str = typer.Option("14d", "--since", help="With --from-history: how far back."),
    policy: Path | None = typer.Option(
        None, "--policy", help="The current policy (default: HEALTHGATE_POLICY_FILE)."
    ),
    candidate: Path | None = typer.Option(
        None, "--candidate", help="A policy file to compare with the current one."
    ),
    report: Path = typer.Option(
        Path("simulation"), "--out", help="The folder the report and plots are written to."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report's JSON on stdout."),
    save_trace: Path | None = typer.Option(
        None, "--save-trace", help="Also write the trace used to this file (JSON lines)."
    ),
    days: float | None = typer.Option(
        None, "--days", help="With --world: run only its first DAYS days.", min=0.001
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the PNG plots."),
    serial: bool = typer.Option(
        False, "--serial", help="Run the policies one after the other, not side by side."
    ),
) -> None:
    """Run the traffic through healthgate's own gate, router, caps, holds, ramp and
    content rules, with a simulated clock and provider, for the current policy and a
    candidate side by side; writes report.md, report.json and the plots."""
    # Heavy imports here, so `healthgate --help` stays quick.
    from scheduler.simulate import cli_runs

    sources = [world is not None, trace is not None, from_history]
    if sum(sources) != 1:
        raise InvalidInput("--world", world, "give one of --world, --trace or --from-history")
    from scheduler.settings import Settings

    settings = Settings()
    scenario, source, policies = cli_runs.prepare(
        settings,
        world=world,
        trace=trace,
        since=parse_duration(since, "--since") if from_history else None,
        policy=policy or settings.policy_file,
        candidate=candidate,
        days=days,
    )
    if save_trace is not None:
        cli_runs.save(scenario, save_trace)
    outcomes = cli_runs.run(scenario, policies, err, parallel=not serial)
    written = cli_runs.write(report, outcomes, [c.policy for c in policies], source, plots)
    if as_json:
        print_json(_json(written["json"]))
        return
    out.print(cli_runs.summary_table(outcomes))
    out.print(f"report: {written['markdown']}  (JSON: {written['json']})", highlight=False)


def _json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())
