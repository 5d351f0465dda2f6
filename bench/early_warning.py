"""Early warning measured on simulated worlds: ``python -m bench.early_warning``.

Each world runs three times through healthgate's own dispatch (``healthgate simulate``'s
engine): early warning ``off`` (the cost baseline), ``shadow`` (the provider's status
alone decides, the estimate is read at the end of every simulated hour) and ``enforce``.
The table it writes (``docs/early-warning/results.md`` and ``.json``) says, per world:

- caught: of the lines the provider model flags (moves to AT_RISK, CRITICAL or FLAGGED)
  in the shadow run, the share whose estimate reached AT_RISK or worse at or before the
  model's move, and the median lead (hours, read hourly);
- false alarms: of the lines the model never flags, the share estimated AT_RISK or worse
  at two hourly readings in a row (more than an hour);
- enforce: lines the model flags under enforce against shadow, and messages sent to
  engaged recipients (the world's segments that reply at 20 % or more) under each;
- cost: wall clock of the shadow run (which estimates every batch) over the off run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from policies.config import Policy, parse_policy
from scheduler.runtime import Runtime
from scheduler.simulate.engine import Simulation, scratch
from scheduler.simulate.outcome import Outcome
from scheduler.simulate.run import world_scenario
from scheduler.simulate.traffic import Population
from scheduler.simulate.world import World, parse_world
from scheduler.store.early_signals import line_estimates
from scheduler.store.models import Line

START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
LINES = [f"+1415555{100 + i:04d}" for i in range(4)]
#: The policy every world runs: caps looser than the starter's, as a sender who pushes.
CAPS = {
    "sends_per_minute": 20,
    "new_conversations_per_day": 300,
    "distinct_recipients_per_hour": 150,
    "sends_per_day": 3000,
}
#: A segment replying this often or more is engaged.
ENGAGED = 0.2
FLAGS = ("AT_RISK", "CRITICAL", "FLAGGED")


def _world(
    name: str,
    days: float,
    segments: list[dict[str, Any]],
    line_model: dict[str, Any],
    waves: list[dict[str, Any]],
    recipients: int,
    campaigns: list[dict[str, Any]] | None = None,
) -> World:
    return parse_world(
        {
            "world": {"start": START, "days": days, "seed": 5, "tick_seconds": 30},
            "providers": [
                {
                    "name": "linq",
                    "chat": {"at_risk_after_unanswered": 3, "critical_after_unanswered": 6},
                    "line": {"share_min_chats": 40, "recover_after_hours": 6, **line_model},
                }
            ],
            "lines": [{"number": n, "provider": "linq"} for n in LINES],
            "recipients": {"count": recipients, "segments": segments},
            "traffic": {
                "enqueue_every_seconds": 120,
                "waves": waves,
                "campaigns": campaigns or [],
            },
        },
        name,
    )


def _wave(at: str, messages: int, hours: float, body: str = "Update") -> dict[str, Any]:
    return {
        "name": f"wave {at}",
        "at": at,
        "messages": messages,
        "spread_minutes": hours * 60,
        "body": [f"{body} {i}: news about your account" for i in range(6)],
        "expires_hours": 12,
    }


SHARE_RULE = {"at_risk_unhealthy_share": 0.25, "critical_unhealthy_share": 0.5}


def worlds() -> dict[str, World]:
    """Five settings; the last two score lines by rules the estimator does not read."""
    engaged = [
        {
            "name": "engaged",
            "share": 0.6,
            "reply_probability": 0.5,
            "reply_minutes": 20,
            "opt_out_probability": 0.002,
        },
        {
            "name": "cold",
            "share": 0.4,
            "reply_probability": 0.05,
            "reply_minutes": 240,
            "opt_out_probability": 0.005,
        },
    ]
    cold = [
        {
            "name": "engaged",
            "share": 0.1,
            "reply_probability": 0.5,
            "reply_minutes": 20,
            "opt_out_probability": 0.002,
        },
        {
            "name": "cold",
            "share": 0.9,
            "reply_probability": 0.01,
            "reply_minutes": 240,
            "opt_out_probability": 0.01,
        },
    ]
    mixed = [
        {
            "name": "engaged",
            "share": 0.3,
            "reply_probability": 0.5,
            "reply_minutes": 20,
            "opt_out_probability": 0.002,
        },
        {
            "name": "cold",
            "share": 0.7,
            "reply_probability": 0.03,
            "reply_minutes": 240,
            "opt_out_probability": 0.01,
        },
    ]
    twice = [_wave("09:00:00", 400, 3), _wave("15:00:00", 400, 3, "Reminder")]
    return {
        # Engaged recipients, a small list written to twice a day: the model never flags.
        "engaged list": _world("engaged list", 2, engaged, SHARE_RULE, twice, 800),
        # A cold list written to twice a day: unanswered chats pile up until the model
        # flags the lines on their share of unhealthy chats.
        "cold list": _world("cold list", 2, cold, SHARE_RULE, twice, 800),
        # The example world's mix, a larger list: some streaks, fewer repeats.
        "mixed list": _world("mixed list", 2, mixed, SHARE_RULE, twice, 1600),
        # Rule differs: the model scores new conversations a day, under the policy's cap
        # (which the estimate reads at 90 %); a fresh list each day.
        "new-conversation rule": _world(
            "new-conversation rule",
            2,
            mixed,
            {"at_risk_new_conversations_per_day": 200, "critical_new_conversations_per_day": 280},
            [_wave("09:00:00", 900, 6)],
            200_000,
        ),
        # Rule differs: the model scores the busiest minute, which the estimate never
        # reads (the policy's pace of 20 a minute is over the model's 15).
        "pace rule": _world(
            "pace rule",
            2,
            engaged,
            {"at_risk_sends_per_minute": 15, "critical_sends_per_minute": 30},
            [_wave("09:00:00", 2000, 0.5)],
            200_000,
        ),
    }


def policy(mode: str) -> Policy:
    return parse_policy(
        {
            "lines": [{"number": n, "provider": "log"} for n in LINES],
            "caps": CAPS,
            "early_warning": {"mode": mode},
        },
        f"early warning {mode}",
    )


@dataclass
class Watched(Simulation):
    """A simulation that reads every line's estimate at the end of each simulated hour."""

    readings: list[tuple[float, str, str]] = field(default_factory=list)
    #: The signals past a threshold at each reading where there was one.
    signals: list[tuple[float, str, tuple[str, ...]]] = field(default_factory=list)

    def _close_hour(self, runtime: Runtime, outcome: Outcome, end: datetime) -> None:
        super()._close_hour(runtime, outcome, end)
        hour = (end - self.scenario.start).total_seconds() / 3600
        with runtime.reads() as session:
            lines = list(session.scalars(select(Line)))
            found = line_estimates(session, lines, self.policy, end)
            for line in lines:
                estimate = found[line.id]
                self.readings.append((hour, line.number, estimate.status.value))
                if estimate.reasons:
                    names = tuple(sorted({r.signal for r in estimate.reasons}))
                    self.signals.append((hour, line.number, names))


def _run(job: tuple[str, str, str]) -> dict[str, Any]:
    world_name, mode, folder = job
    world = worlds()[world_name]
    run = Watched(mode, policy(mode), world_scenario(world, batch=200), Path(folder) / mode)
    cpu = time.process_time()
    outcome = run.run()
    cpu = time.process_time() - cpu
    people = Population(world)
    store = sqlite3.connect(run.folder / f"{mode}.sqlite")
    engaged = 0
    for (recipient,) in store.execute("SELECT recipient FROM messages WHERE state = 'sent'"):
        segment = people.segment_of(people.index(recipient))
        engaged += segment.reply_probability >= ENGAGED
    store.close()
    return {
        "world": world_name,
        "mode": mode,
        "wall_seconds": outcome.wall_seconds,
        # This process's CPU time: the machine may be shared, the wall clock is noisy.
        "cpu_seconds": cpu,
        "sent": sum(sum(s) for s in outcome.sends.values()),
        "engaged_sent": engaged,
        "flags": [(h, line, s) for h, line, s in outcome.line_flags if s in FLAGS],
        "readings": run.readings,
        "signals": run.signals,
    }


def _first(rows: list[tuple[float, str, str]], statuses: tuple[str, ...]) -> dict[str, float]:
    first: dict[str, float] = {}
    for hour, line, status in rows:
        if status in statuses and line not in first:
            first[line] = hour
    return first


def _long_alarms(readings: list[tuple[float, str, str]]) -> set[str]:
    """Lines estimated AT_RISK or worse at two hourly readings in a row."""
    last: dict[str, str] = {}
    found = set()
    for _hour, line, status in sorted(readings):
        if status != "HEALTHY" and last.get(line, "HEALTHY") != "HEALTHY":
            found.add(line)
        last[line] = status
    return found


def measure(world: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shadow, enforce, off = runs["shadow"], runs["enforce"], runs.get("off")
    flagged = _first(shadow["flags"], FLAGS)
    estimated = _first(shadow["readings"], ("AT_RISK", "CRITICAL"))
    leads = [
        flagged[n] - estimated[n] for n in flagged if n in estimated and estimated[n] <= flagged[n]
    ]
    quiet = [n for n in LINES if n not in flagged]
    alarms = _long_alarms(shadow["readings"]) & set(quiet)
    enforced_flagged = _first(enforce["flags"], FLAGS)
    # Which signals raised the estimate: on the lines flagged, up to their flag; on the
    # others, at every reading.
    raised: Counter[str] = Counter()
    for hour, line, names in shadow["signals"]:
        if line not in flagged or hour <= flagged[line]:
            raised.update(names)
    return {
        "world": world,
        "flagged": len(flagged),
        "caught": len(leads),
        "median_lead_hours": statistics.median(leads) if leads else None,
        "never_flagged": len(quiet),
        "false_alarms": len(alarms),
        "flagged_enforce": len(enforced_flagged),
        "engaged_sent_shadow": shadow["engaged_sent"],
        "engaged_sent_enforce": enforce["engaged_sent"],
        "sent_shadow": shadow["sent"],
        "sent_enforce": enforce["sent"],
        "seconds_off": round(off["cpu_seconds"], 1) if off else None,
        "seconds_shadow": round(shadow["cpu_seconds"], 1),
        "wall_seconds_off": round(off["wall_seconds"], 1) if off else None,
        "wall_seconds_shadow": round(shadow["wall_seconds"], 1),
        "signals_hours": dict(raised.most_common()),
    }


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def _cost(r: dict[str, Any]) -> str:
    if r["seconds_off"] is None:
        return "-"
    return (
        f"{r['seconds_shadow']} s / {r['seconds_off']} s "
        f"({_pct(r['seconds_shadow'], r['seconds_off'])})"
    )


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| world | flagged (shadow) | caught | median lead | false alarms | flagged (enforce) "
        "| engaged sends enforce / shadow | all sends enforce / shadow "
        "| cost: CPU s shadow / off |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        lead = "-" if r["median_lead_hours"] is None else f"{r['median_lead_hours']:.1f} h"
        body += (
            f"| {r['world']} | {r['flagged']} of 4 "
            f"| {r['caught']} ({_pct(r['caught'], r['flagged'])}) "
            f"| {lead} | {r['false_alarms']} of {r['never_flagged']} "
            f"({_pct(r['false_alarms'], r['never_flagged'])}) | {r['flagged_enforce']} "
            f"| {r['engaged_sent_enforce']:,} / {r['engaged_sent_shadow']:,} "
            f"({_pct(r['engaged_sent_enforce'], r['engaged_sent_shadow'])}) "
            f"| {r['sent_enforce']:,} / {r['sent_shadow']:,} "
            f"| {_cost(r)} |\n"
        )
    causes = "".join(
        f"- {r['world']}: "
        + (", ".join(f"{name} ({hours})" for name, hours in r["signals_hours"].items()) or "none")
        + "\n"
        for r in rows
    )
    return (
        head
        + body
        + "\nSignals past a threshold, with the number of line-hours each was (on flagged "
        "lines, up to their flag):\n\n" + causes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/early-warning"))
    parser.add_argument("--only", nargs="*", help="world names to run (default: all five)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--cost",
        nargs="*",
        default=["engaged list", "cold list"],
        help="worlds also run with early warning off, for the cost (default: two)",
    )
    args = parser.parse_args()
    names = args.only or list(worlds())
    with scratch() as folder:
        jobs = [
            (w, mode, f"{folder}/{i}")
            for i, w in enumerate(names)
            for mode in ("shadow", "enforce", *(("off",) if w in args.cost else ()))
        ]
        with multiprocessing.get_context("fork").Pool(args.processes) as pool:
            results = pool.map(_run, jobs, chunksize=1)
    by_world: dict[str, dict[str, dict[str, Any]]] = {}
    for result in results:
        by_world.setdefault(result["world"], {})[result["mode"]] = result
    rows = [measure(w, by_world[w]) for w in names]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
