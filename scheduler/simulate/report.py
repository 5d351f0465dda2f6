"""The comparison report: Markdown with its plots, and the same figures as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policies.changes import described, diff, normalised
from policies.config import Policy
from scheduler.simulate.outcome import Outcome

#: The summary rows: (key, label, whether lower is better).
ROWS: tuple[tuple[str, str, bool | None], ...] = (
    ("enqueued", "messages enqueued", None),
    ("sent", "sent", None),
    ("dropped", "dropped", None),
    ("expired", "expired", True),
    ("failed", "failed (provider refused)", True),
    ("waiting_at_end", "still waiting at the end", True),
    ("latency_p50_s", "enqueue to send, median (s)", True),
    ("latency_p90_s", "enqueue to send, p90 (s)", True),
    ("latency_p99_s", "enqueue to send, p99 (s)", True),
    ("opt_outs", "opt-outs", True),
    ("sent_before_opt_out_same_day", "sent to recipients who opted out later that day", True),
    ("line_flags", "lines FLAGGED by the provider model", True),
    ("lines_critical", "line moves to CRITICAL", True),
    ("chats_critical", "chat moves to CRITICAL", True),
    ("decisions", "decisions recorded", None),
    ("wall_seconds", "simulation time (s)", None),
)


def as_json(
    outcomes: Sequence[Outcome], policies: Sequence[Policy], source: dict[str, Any]
) -> dict[str, Any]:
    return {
        "source": source,
        "policies": [
            {"name": o.name, "policy": normalised(p)}
            for o, p in zip(outcomes, policies, strict=True)
        ],
        "runs": [o.as_json() for o in outcomes],
    }


def markdown(
    outcomes: Sequence[Outcome],
    policies: Sequence[Policy],
    source: dict[str, Any],
    plots: Sequence[Path],
    folder: Path,
) -> str:
    """The report: what was run, the side-by-side summary, what differs, the plots."""
    lines = ["# healthgate simulate", ""]
    span = f"{source.get('start')} to {source.get('end')}"
    lines += [f"Source: {source.get('kind')} ({source.get('name')}), {span}.", ""]
    if len(policies) > 1:
        changes = diff(normalised(policies[0]), normalised(policies[1]))
        lines += [
            f"Policies: **{outcomes[0].name}** and **{outcomes[1].name}**; "
            f"the candidate changes: {described(changes) or 'nothing'}.",
            "",
        ]
    lines += ["| measure | " + " | ".join(o.name for o in outcomes) + " |"]
    lines += ["|---" * (len(outcomes) + 1) + "|"]
    summaries = [o.summary() for o in outcomes]
    for key, label, _lower in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(s.get(key)) for s in summaries) + " |")
    lines.append("")
    flags = [(o.name, h, line, s) for o in outcomes for h, line, s in o.line_flags]
    if flags:
        lines += ["## Line moves by the provider model", ""]
        lines += ["| policy | day, hour | line | to |", "|---|---|---|---|"]
        for name, hour, line, status in flags[:60]:
            lines.append(
                f"| {name} | {int(hour // 24) + 1}, {hour % 24:04.1f} | {line} | {status} |"
            )
        if len(flags) > 60:
            lines.append(f"| … | {len(flags) - 60} more in the JSON | | |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            title = plot.stem.replace("_", " ")
            lines += [f"### {title}", "", f"![{title}]({plot.relative_to(folder)})", ""]
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write(
    folder: Path,
    outcomes: Sequence[Outcome],
    policies: Sequence[Policy],
    source: dict[str, Any],
    with_plots: bool = True,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the plots under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    if with_plots:
        from scheduler.simulate.plots import draw_all

        plots = draw_all(outcomes, folder)
    written = {"markdown": folder / "report.md", "json": folder / "report.json"}
    written["markdown"].write_text(markdown(outcomes, policies, source, plots, folder) + "\n")
    written["json"].write_text(json.dumps(as_json(outcomes, policies, source), indent=1) + "\n")
    return written
