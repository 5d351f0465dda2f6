"""The results as a Markdown table, each ratio next to its goal.

Every goal is a ratio to a baseline or a limit measured in the same run (or, for end to
end, the median of the last three runs' ratios): the machine's speed drifts by a factor
of two from day to day, the ratios do not. Absolute rates are shown for reference only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.history import recent_median

GOALS = {
    #: ``healthgate --help`` at most this many seconds slower than ``python -c pass``.
    "cli_over_python_seconds": 0.3,
    #: ``enqueue()`` at least as fast as a bare Celery ``apply_async`` publish.
    "single_vs_publish": 1.0,
    #: ``enqueue_many`` on a named line at least this share of a COPY of the same rows.
    "bulk_vs_copy": 0.3,
    #: Routed ``enqueue_many`` at least this share of the named-line rate...
    "routed_vs_named": 0.5,
    #: ...spreading new recipients so the busiest line takes at most this times the least.
    "routed_largest_over_smallest": 1.5,
    "gate_p99_us": 50,
    #: Gated end to end against a bare Celery task per message: median of three runs.
    "end_to_end_ratio": 8.0,
    "scale_ratio": 1.2,
    "rss_growth_percent": 10,
    #: A 30-day, 100,000-message world, two policies: in a minute.
    "simulate_seconds": 60,
}


def _row(name: str, figure: str, goal: str, met: bool | None) -> str:
    mark = "—" if met is None else ("met" if met else "not met")
    return f"| {name} | {figure} | {goal} | {mark} |\n"


def markdown(r: dict[str, Any], history: Path | None = None) -> str:
    m = r["machine"]
    text = f"# healthgate benchmark ({r['size']})\n\n"
    text += (
        f"{r['date']}, commit {r.get('commit', '?')}; {m['cores']} cores, {m['ram_gib']} GiB "
        f"RAM; Python {m['python']}, PostgreSQL {m['postgresql']}, Redis {m['redis']}, "
        f"Celery {m['celery']}, SQLAlchemy {m['sqlalchemy']}, healthgate {m['healthgate']}.\n\n"
    )
    if r.get("note"):
        text += f"Conditions: {r['note']}\n\n"
    if "load" in r:
        load = r["load"]
        text += (
            f"One-minute load average: {load.get('start')} at the start, {load.get('end')} at "
            f"the end ({m['cores']} cores).\n\n"
        )
    text += "| measure | result | goal | |\n|---|---|---|---|\n"
    text += _cli(r) + _enqueue(r) + _gate(r) + _end_to_end(r, history) + _scale(r)
    text += _recovery(r)
    return text


def _cli(r: dict[str, Any]) -> str:
    if "cli" not in r:
        return ""
    c = r["cli"]
    return _row(
        f"`healthgate --help` vs `python -c pass`, median of {c['runs']}",
        f"+{c['over_python_seconds']} s ({c['help_seconds']} s vs {c['python_seconds']} s)",
        "≤ +0.3 s",
        c["over_python_seconds"] <= GOALS["cli_over_python_seconds"],
    )


def _enqueue(r: dict[str, Any]) -> str:
    if "enqueue" not in r:
        return ""
    e = r["enqueue"]
    text = _row(
        "`enqueue()`, one a call / bare Celery `apply_async` publish",
        f"{e['single_vs_publish']:.2f}x ({e['single_per_second']:,.0f} vs "
        f"{e['publish_per_second']:,.0f} msg/s)",
        "≥ 1x",
        e["single_vs_publish"] >= GOALS["single_vs_publish"],
    )
    rounds = len(e["bulk_rounds"])
    text += _row(
        f"`enqueue_many` ({e['bulk_chunk']} a call) / COPY of the same rows, "
        f"medians of {rounds} rounds",
        f"{e['bulk_vs_copy']:.2f}x ({e['bulk_per_second']:,.0f} vs "
        f"{e['copy_per_second']:,.0f} rows/s)",
        "≥ 0.3x",
        e["bulk_vs_copy"] >= GOALS["bulk_vs_copy"],
    )
    if "bulk_vs_copy_indexed" in e:
        text += _row(
            "`enqueue_many` / COPY into a table with the messages table's indexes too",
            f"{e['bulk_vs_copy_indexed']:.2f}x ({e['copy_indexed_per_second']:,.0f} rows/s)",
            "",
            None,
        )
    text += _row(
        "`enqueue_many` routed (`line=None`) / named line",
        f"{e['routed_vs_named']:.2f}x ({e['routed_per_second']:,.0f} msg/s)",
        "≥ 0.5x",
        e["routed_vs_named"] >= GOALS["routed_vs_named"],
    )
    largest = e["routed_spread"]["largest_over_smallest"]
    text += _row(
        "routed: new recipients on the busiest line / the least busy",
        "a line took none" if largest is None else f"{largest}x",
        "≤ 1.5x",
        largest is not None and largest <= GOALS["routed_largest_over_smallest"],
    )
    return text


def _gate(r: dict[str, Any]) -> str:
    if "gate" not in r:
        return ""
    g = r["gate"]
    return _row(
        "gate decide(), median / p99",
        f"{g['median_us']} / {g['p99_us']} µs",
        "p99 ≤ 50 µs",
        g["p99_us"] <= GOALS["gate_p99_us"],
    )


def _end_to_end(r: dict[str, Any], history: Path | None) -> str:
    if "end_to_end" not in r:
        return ""
    e2e = r["end_to_end"]
    text = _row(
        "gated end to end / bare Celery task per message, this run",
        f"{e2e['ratio']}x ({e2e['gated']['per_second']:,.0f} vs "
        f"{e2e['baseline']['per_second']:,.0f} msg/s)",
        "≥ 8x",
        e2e["ratio"] >= GOALS["end_to_end_ratio"],
    )
    recent = recent_median(history, "end_to_end_ratio", r["size"]) if history else None
    if recent is not None:
        median, runs = recent
        text += _row(
            f"gated end to end, median of the last {runs} runs",
            f"{median}x",
            "≥ 8x (median of 3)",
            median >= GOALS["end_to_end_ratio"] if runs >= 3 else None,
        )
    mem = e2e["gated"]["memory"]
    if mem:
        text += _row(
            "worker RSS, first vs last quarter of the run",
            f"{mem['growth_percent']:+}% ({mem['first_quarter_total_mib']} → "
            f"{mem['last_quarter_total_mib']} MiB)",
            "flat (< 10%)",
            mem["growth_percent"] < GOALS["rss_growth_percent"],
        )
    if "simulate" in r:
        text += _simulate(r["simulate"])
    return text


def _simulate(s: dict[str, Any]) -> str:
    text = _row(
        f"simulate: {s['messages']:,} messages ({s['days']:g} days, {s['lines']} lines, "
        "two policies in parallel)",
        f"{s['wall_seconds']:,} s ({s['per_second']:,.0f} msg/s; "
        f"{s['per_cpu_second']:,.0f} msg per CPU second)",
        "2 x 100,000 over 30 days in ≤ 60 s",
        s["wall_seconds"] <= GOALS["simulate_seconds"] if s["messages"] >= 200_000 else None,
    )
    text += _row(
        "simulate: ratio to decide()'s rate, same run",
        f"{s['ratio_to_decide']} ({s['decide_per_second']:,} decide/s)",
        "",
        None,
    )
    for i, mem in enumerate(s["memory"]):
        if mem["growth_percent"] is not None:
            text += _row(
                f"simulate: RSS of run {i + 1}, first vs last quarter",
                f"{mem['first_quarter_mib']} → {mem['last_quarter_mib']} MiB "
                f"({mem['growth_percent']:+}%)",
                "flat (< 10%)",
                mem["growth_percent"] < GOALS["rss_growth_percent"],
            )
    return text


def _scale(r: dict[str, Any]) -> str:
    if "scale" not in r:
        return ""
    points = r["scale"]["points"]
    text = "".join(
        _row(
            f"dispatch with {p['waiting']:,} waiting",
            f"{p['us_per_decision']:,.0f} µs/decision",
            "",
            None,
        )
        for p in points
    )
    return text + _row(
        "cost at the largest backlog / smallest",
        f"{r['scale']['ratio']}x",
        "≤ 1.2x",
        r["scale"]["ratio"] <= GOALS["scale_ratio"],
    )


def _recovery(r: dict[str, Any]) -> str:
    if "recovery" not in r:
        return ""
    rec = r["recovery"]
    text = _row(
        f"recovery: {rec['backlog']:,} deferred released to the queue",
        f"{rec['released_to_queue_seconds']} s",
        "",
        None,
    )
    return text + _row(
        "recovery: all dispatched (one process)",
        f"{rec['dispatch_seconds']} s ({rec['dispatched_per_second']:,.0f} msg/s)",
        "",
        None,
    )
