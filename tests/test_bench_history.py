"""The benchmark's history: each run appends its figures; the plot reads them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.history import append, plot, read, recent_median


def a_run(date: str, ratio: float, waiting_cost: tuple[float, float]) -> dict[str, Any]:
    return {
        "date": date,
        "commit": "abc1234",
        "size": "smoke",
        "end_to_end": {"ratio": ratio},
        "scale": {
            "ratio": round(waiting_cost[1] / waiting_cost[0], 2),
            "points": [
                {"waiting": 1_000, "us_per_decision": waiting_cost[0]},
                {"waiting": 10_000, "us_per_decision": waiting_cost[1]},
            ],
        },
    }


def test_each_run_appends_its_rows_under_one_header(tmp_path: Path) -> None:
    # Given an empty folder
    history = tmp_path / "history.csv"
    # When three runs are appended
    for i, ratio in enumerate((4.0, 9.0, 8.5)):
        append(history, a_run(f"2026-12-01T0{i}:00:00+00:00", ratio, (500.0, 520.0)))
    # Then the header is written once and every run's figures are kept, in order
    lines = history.read_text().splitlines()
    assert lines[0] == "date,commit,size,measure,parameter,value"
    assert sum(line.startswith("date,") for line in lines) == 1
    ratios = [row["value"] for row in read(history) if row["measure"] == "end_to_end_ratio"]
    assert ratios == ["4.0", "9.0", "8.5"]
    costs = [row["parameter"] for row in read(history) if row["measure"] == "us_per_decision"]
    assert costs == ["waiting=1000", "waiting=10000"] * 3


def test_the_recent_median_is_over_the_last_three_runs_of_the_size(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    for i, ratio in enumerate((1.0, 9.0, 8.0, 10.0)):
        append(history, a_run(f"2026-12-01T0{i}:00:00+00:00", ratio, (500.0, 520.0)))
    assert recent_median(history, "end_to_end_ratio", "smoke") == (9.0, 3)
    assert recent_median(history, "end_to_end_ratio", "full") is None


def test_the_plot_is_a_png_of_every_run(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    append(history, a_run("2026-12-01T00:00:00+00:00", 4.0, (500.0, 600.0)))
    append(history, a_run("2026-12-01T01:00:00+00:00", 9.0, (300.0, 310.0)))
    image = plot(history, tmp_path / "history.png", "smoke")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
