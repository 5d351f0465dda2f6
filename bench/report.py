"""The results as a Markdown table, each figure next to its goal."""

from __future__ import annotations

from typing import Any

GOALS = {
    "end_to_end_ratio": 3.0,
    "bulk_enqueue_per_second": 20_000,
    "gate_p99_us": 50,
    "scale_ratio": 1.2,
    "rss_growth_percent": 10,
    #: A 30-day, 100,000-message world, two policies: in a minute.
    "simulate_seconds": 60,
}


def _row(name: str, figure: str, goal: str, met: bool | None) -> str:
    mark = "—" if met is None else ("met" if met else "not met")
    return f"| {name} | {figure} | {goal} | {mark} |\n"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    text = f"# healthgate benchmark ({r['size']})\n\n"
    text += (
        f"{r['date']}; {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}, Redis {m['redis']}, Celery {m['celery']}, "
        f"SQLAlchemy {m['sqlalchemy']}, healthgate {m['healthgate']}.\n\n"
    )
    if r.get("note"):
        text += f"Conditions: {r['note']}\n\n"
    text += "| measure | result | goal | |\n|---|---|---|---|\n"
    if "enqueue" in r:
        e = r["enqueue"]
        text += _row(
            "enqueue, one call a message", f"{e['single_per_second']:,.0f} msg/s", "", None
        )
        rounds = e.get("bulk_rounds", [e["bulk_per_second"]])
        spread = f" ({min(rounds):,.0f} to {max(rounds):,.0f})" if len(rounds) > 1 else ""
        text += _row(
            f"enqueue_many ({e['bulk_chunk']} a call), median of {len(rounds)} rounds",
            f"{e['bulk_per_second']:,.0f} msg/s{spread}",
            "≥ 20,000 msg/s",
            e["bulk_per_second"] >= GOALS["bulk_enqueue_per_second"],
        )
    if "gate" in r:
        g = r["gate"]
        text += _row(
            "gate decide(), median / p99",
            f"{g['median_us']} / {g['p99_us']} µs",
            "p99 ≤ 50 µs",
            g["p99_us"] <= GOALS["gate_p99_us"],
        )
    if "end_to_end" in r:
        e2e = r["end_to_end"]
        text += _row(
            "bare Celery task per message (baseline)",
            f"{e2e['baseline']['per_second']:,.0f} msg/s",
            "",
            None,
        )
        text += _row(
            "healthgate, gated end to end", f"{e2e['gated']['per_second']:,.0f} msg/s", "", None
        )
        text += _row(
            "ratio, same run", f"{e2e['ratio']}x", "≥ 3x", e2e["ratio"] >= GOALS["end_to_end_ratio"]
        )
        mem = e2e["gated"]["memory"]
        if mem:
            text += _row(
                "worker RSS: peak process / pool total",
                f"{mem['peak_process_mib']} / {mem['peak_total_mib']} MiB",
                "",
                None,
            )
            text += _row(
                "worker RSS, first vs last quarter of the run",
                f"{mem['first_quarter_total_mib']} → {mem['last_quarter_total_mib']} MiB "
                f"({mem['growth_percent']:+}%)",
                "flat (< 10%)",
                mem["growth_percent"] < GOALS["rss_growth_percent"],
            )
    if "scale" in r:
        points = r["scale"]["points"]
        for p in points:
            text += _row(
                f"dispatch with {p['waiting']:,} waiting",
                f"{p['us_per_decision']:,.0f} µs/decision",
                "",
                None,
            )
        text += _row(
            "cost at the largest backlog / smallest",
            f"{r['scale']['ratio']}x",
            "≤ 1.2x",
            r["scale"]["ratio"] <= GOALS["scale_ratio"],
        )
    if "recovery" in r:
        rec = r["recovery"]
        text += _row(
            f"recovery: {rec['backlog']:,} deferred released to the queue",
            f"{rec['released_to_queue_seconds']} s",
            "",
            None,
        )
        text += _row(
            "recovery: all dispatched (one process)",
            f"{rec['dispatch_seconds']} s ({rec['dispatched_per_second']:,.0f} msg/s)",
            "",
            None,
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
