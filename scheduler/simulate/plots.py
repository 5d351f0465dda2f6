"""The report's plots (matplotlib, imported only here): both policies on the same axes."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

from scheduler.simulate.outcome import LATENCY_EDGES, Outcome

#: One colour a policy, the same in every plot.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
STYLES = ("-", "--", ":", "-.")


def draw_all(outcomes: Sequence[Outcome], folder: Path) -> list[Path]:
    """Every plot, as PNG files under ``folder``; their paths."""
    drawers = (sends, waiting, latency, dropped, opt_outs, flags)
    return [draw(outcomes, folder) for draw in drawers]


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _legend(ax: Any, **options: Any) -> None:
    """A legend, when anything was drawn with a label."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)


def _days(outcome: Outcome) -> list[float]:
    return [h / 24 for h in range(outcome.hours)]


def sends(outcomes: Sequence[Outcome], folder: Path) -> Path:
    names = sorted({line for o in outcomes for line in o.sends})
    rows = max(len(names), 1)
    figure, axes = plt.subplots(rows, 1, figsize=(10, 1.4 * rows + 1), sharex=True, squeeze=False)
    for ax, line in zip(axes[:, 0], names, strict=False):
        for i, o in enumerate(outcomes):
            series = o.sends.get(line, [0] * o.hours)
            ax.plot(_days(o), series, COLOURS[i], lw=0.8, label=o.name)
        ax.set_ylabel(line[-4:], rotation=0, labelpad=18)
    axes[0, 0].set_title("sends per line per hour (line's last 4 digits)")
    _legend(axes[0, 0], loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("day")
    return _save(figure, folder / "sends_per_line_per_hour.png")


def waiting(outcomes: Sequence[Outcome], folder: Path) -> Path:
    figure, ax = plt.subplots(figsize=(10, 4))
    totals: dict[str, int] = {}
    for o in outcomes:
        for reason, series in o.waiting.items():
            totals[reason] = totals.get(reason, 0) + sum(series)
    reasons = sorted(totals, key=lambda r: -totals[r])[:6]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, o in enumerate(outcomes):
        for j, reason in enumerate(reasons):
            series = o.waiting.get(reason, [0] * o.hours)
            ax.plot(
                _days(o),
                series,
                STYLES[i],
                color=colours[j % len(colours)],
                lw=0.9,
                label=f"{o.name}: {reason}",
            )
    ax.set_title("messages waiting at the end of each hour, by reason")
    ax.set_xlabel("day")
    _legend(ax, fontsize="x-small", ncol=2)
    return _save(figure, folder / "waiting_by_reason.png")


def latency(outcomes: Sequence[Outcome], folder: Path) -> Path:
    figure, ax = plt.subplots(figsize=(10, 4))
    edges = [*LATENCY_EDGES, LATENCY_EDGES[-1] * 10]
    for i, o in enumerate(outcomes):
        total = sum(o.latency) or 1
        shares = [c / total for c in accumulate(o.latency)]
        ax.step(edges, shares, where="post", color=COLOURS[i], label=o.name)
    ax.set_xscale("log")
    for seconds, mark in ((60, "1 min"), (3600, "1 h"), (86400, "1 day")):
        ax.axvline(seconds, color="grey", lw=0.5)
        ax.text(seconds, 0.02, mark, fontsize="small")
    ax.set_title("time from enqueue to send (CDF of sent messages)")
    ax.set_xlabel("seconds")
    ax.set_ylim(0, 1.02)
    _legend(ax)
    return _save(figure, folder / "enqueue_to_send_cdf.png")


def dropped(outcomes: Sequence[Outcome], folder: Path) -> Path:
    figure, ax = plt.subplots(figsize=(10, 4))
    for i, o in enumerate(outcomes):
        for series, style, what in ((o.dropped, "-", "dropped"), (o.expired, "--", "expired")):
            ax.plot(
                _days(o),
                list(accumulate(series)),
                style,
                color=COLOURS[i],
                label=f"{o.name}: {what}",
            )
    ax.set_title("messages dropped and expired (cumulative)")
    ax.set_xlabel("day")
    _legend(ax)
    return _save(figure, folder / "dropped_and_expired.png")


def opt_outs(outcomes: Sequence[Outcome], folder: Path) -> Path:
    figure, ax = plt.subplots(figsize=(10, 4))
    for i, o in enumerate(outcomes):
        ax.plot(
            _days(o),
            list(accumulate(o.opt_outs)),
            "-",
            color=COLOURS[i],
            label=f"{o.name}: opt-outs",
        )
        ax.plot(
            _days(o),
            list(accumulate(o.sent_before_opt_out)),
            "--",
            color=COLOURS[i],
            label=f"{o.name}: sent to recipients who opted out later that day",
        )
    ax.set_title("opt-outs (cumulative)")
    ax.set_xlabel("day")
    _legend(ax, fontsize="small")
    return _save(figure, folder / "opt_outs.png")


def flags(outcomes: Sequence[Outcome], folder: Path) -> Path:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    numbers = sorted({line for o in outcomes for _, line, _ in o.line_flags})
    markers = {"AT_RISK": "o", "CRITICAL": "s", "FLAGGED": "X", "HEALTHY": "|", "ACTIVE": "|"}
    for i, o in enumerate(outcomes):
        for status, marker in markers.items():
            points = [
                (h / 24, numbers.index(line) + 0.15 * i)
                for h, line, s in o.line_flags
                if s == status
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                top.scatter(xs, ys, marker=marker, color=COLOURS[i], label=f"{o.name}: {status}")
        for status, style in (("AT_RISK", ":"), ("CRITICAL", "-")):
            series = o.chat_flags.get(status, [0] * o.hours)
            bottom.plot(
                _days(o),
                series,
                style,
                color=COLOURS[i],
                lw=0.8,
                label=f"{o.name}: chats to {status}",
            )
    top.set_yticks(range(len(numbers)), [n[-4:] for n in numbers])
    top.set_title("when the provider model moved each line")
    if numbers:
        _legend(top, fontsize="x-small", ncol=3)
    bottom.set_title("chats the provider model moved, per hour")
    bottom.set_xlabel("day")
    _legend(bottom, fontsize="x-small")
    return _save(figure, folder / "provider_flags.png")
