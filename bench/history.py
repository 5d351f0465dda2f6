"""Every run's figures appended to ``history.csv``, and a plot of them.

The file is long and narrow (one figure a row) so that a measure added later needs no
change to the rows before it. Ratios are what runs on different days can be compared by:
the machine's own speed drifts by a factor of two, a ratio to a baseline measured in the
same run does not.
"""

from __future__ import annotations

import csv
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

COLUMNS = ("date", "commit", "size", "measure", "parameter", "value")
#: The ratios plotted over time, each with its goal and which side of it is good.
RATIOS = {
    "cli_over_python_seconds": (0.3, "below"),
    "single_vs_publish": (1.0, "above"),
    "bulk_vs_copy": (0.3, "above"),
    "routed_vs_named": (0.5, "above"),
    "end_to_end_ratio": (8.0, "above"),
    "scale_ratio": (1.2, "below"),
}


def commit() -> str:
    """The code measured: the commit, marked ``+`` when the tree had changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}+" if head and dirty else head or "unknown"


def figures(results: dict[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(measure, parameter, value) for every figure of a run worth following."""
    for moment, load in results.get("load", {}).items():
        yield "load_average", moment, load
    if "cli" in results:
        yield "cli_over_python_seconds", "", results["cli"]["over_python_seconds"]
    if "gate" in results:
        yield "gate_p99_us", "", results["gate"]["p99_us"]
    if "enqueue" in results:
        e = results["enqueue"]
        for name in (
            "single_vs_publish",
            "bulk_vs_copy",
            "bulk_vs_copy_indexed",
            "routed_vs_named",
        ):
            if name in e:
                yield name, "", e[name]
        largest = e.get("routed_spread", {}).get("largest_over_smallest")
        if largest is not None:
            yield "routed_largest_over_smallest", "", largest
    if "end_to_end" in results:
        yield "end_to_end_ratio", "", results["end_to_end"]["ratio"]
    if "scale" in results:
        yield "scale_ratio", "", results["scale"]["ratio"]
        for point in results["scale"]["points"]:
            yield "us_per_decision", f"waiting={point['waiting']}", point["us_per_decision"]
    if "recovery" in results:
        rec = results["recovery"]
        yield "recovery_dispatch_seconds", f"backlog={rec['backlog']}", rec["dispatch_seconds"]


def append(path: Path, results: dict[str, Any]) -> int:
    """Add this run's figures to ``path`` (written with a header if new); returns rows."""
    new = not path.exists()
    rows = [
        (results["date"], results.get("commit", ""), results["size"], m, p, v)
        for m, p, v in figures(results)
    ]
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(COLUMNS)
        writer.writerows(rows)
    return len(rows)


def read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def recent_median(path: Path, measure: str, size: str, runs: int = 3) -> tuple[float, int] | None:
    """The median of ``measure`` over the last ``runs`` runs of ``size``, and how many."""
    values = [
        float(r["value"]) for r in read(path) if r["measure"] == measure and r["size"] == size
    ]
    if not values:
        return None
    last = values[-runs:]
    return statistics.median(last), len(last)


def plot(path: Path, image: Path, size: str) -> Path:
    """A PNG of ``size``'s runs: each ratio over the runs with its goal, and the cost of
    one decision against the waiting backlog, one line a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read(path) if r["size"] == size]
    runs = sorted({r["date"] for r in rows})
    order = {date: i for i, date in enumerate(runs)}
    ratios: dict[str, list[tuple[int, float]]] = defaultdict(list)
    backlog: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        if r["measure"] in RATIOS:
            ratios[r["measure"]].append((order[r["date"]], float(r["value"])))
        elif r["measure"] == "us_per_decision":
            waiting = int(r["parameter"].split("=", 1)[1])
            backlog[f"{r['date'][:16]} {r['commit']}"].append((waiting, float(r["value"])))

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    over_time, cost = axes
    for measure, points in sorted(ratios.items()):
        goal, side = RATIOS[measure]
        xs = [x for x, _ in points]
        # Each ratio as a share of its goal: 1 is the goal, whichever way is good.
        ys = [(v / goal) if side == "above" else (goal / v if v > 0 else 10.0) for _, v in points]
        over_time.plot(xs, ys, marker="o", label=f"{measure} (goal {goal})")
    over_time.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    over_time.set_xticks(range(len(runs)), [d[5:16].replace("T", " ") for d in runs], rotation=45)
    over_time.set_ylabel("share of goal (≥ 1 is met)")
    over_time.set_title(f"ratios, run by run ({size})")
    over_time.legend(fontsize=7)
    for label, points in backlog.items():
        points.sort()
        cost.plot([w for w, _ in points], [v for _, v in points], marker="o", label=label)
    cost.set_xscale("log")
    cost.set_xlabel("messages waiting")
    cost.set_ylabel("µs per decision")
    cost.set_ylim(bottom=0)
    cost.set_title("cost of one decision against the backlog")
    if backlog:
        cost.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(image, dpi=100)
    plt.close(fig)
    return image
