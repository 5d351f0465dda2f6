"""How the lines, chats and messages stand: why messages wait, and when they go."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from scheduler.cli.base import (
    app,
    cells,
    open_client,
    out,
    print_json,
)
from scheduler.cli.workers import workers_table

#: The width of a cap's usage bar, in characters.
BAR = 10


def bar(used: int, limit: int) -> Text:
    """``███░░░░░░░ 3/10``, red once the window is full."""
    filled = min(BAR, round(BAR * used / limit)) if limit else BAR
    style = "red" if used >= limit else "yellow" if used >= 0.7 * limit else "green"
    return Text.assemble(("█" * filled, style), ("░" * (BAR - filled), "dim"), f" {used}/{limit}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def _lines(data: dict[str, Any]) -> Table:
    table = Table(
        "line",
        "reputation",
        f"estimate ({data['early_warning']})",
        "status",
        "pace",
        "waiting",
        "due drains in",
        title="lines",
    )
    for line in data["lines"]:
        state = line["status"] if line["enabled"] else f"{line['status']} (not declared)"
        table.add_row(
            f"{line['number']} ({line['provider']})",
            line["reputation"],
            line["health_estimate"]["status"],
            state,
            line["pace"] or "full",
            _counts(line["waiting"]),
            _estimate(line["estimate"]),
        )
    return table


def _oldest(data: dict[str, Any]) -> Table:
    table = Table("line", "oldest waiting message", "since", "reason", title="oldest waiting")
    for line in data["lines"]:
        if oldest := line["oldest_waiting"]:
            table.add_row(line["number"], oldest["id"], oldest["since"], oldest["reason"])
    return table


def _estimate(estimate: dict[str, Any]) -> str:
    from scheduler.store import backlog

    if not estimate["drains_at"]:
        return "nothing due"
    wait = backlog.duration(estimate["seconds"])
    return f"{wait} ({estimate['due']} due)"


def _caps(data: dict[str, Any]) -> Table:
    numbers = [line["number"] for line in data["lines"]]
    table = Table("cap (used in its window / limit now)", *numbers, title="caps")
    for i, cap in enumerate(data["lines"][0]["caps"] if data["lines"] else []):
        name = cap["name"] + (" (busiest recipient)" if cap["per"] == "chat" else "")
        cells = [bar(line["caps"][i]["used"], line["caps"][i]["limit"]) for line in data["lines"]]
        table.add_row(name, *cells)
    return table


def _reasons(data: dict[str, Any]) -> Table:
    numbers = [line["number"] for line in data["lines"]]
    table = Table("reason", *numbers, "all", title="waiting messages by reason")
    for reason, total in sorted(data["waiting"]["by_reason"].items()):
        cells = [str(line["waiting_by_reason"].get(reason, 0)) for line in data["lines"]]
        table.add_row(reason, *cells, str(total))
    return table


def outcomes_line(outcomes: dict[str, Any]) -> str:
    """Where the outcomes of finished messages go and how their delivery stands; empty
    when no callback is configured and none waits."""
    callback, waiting = outcomes["callback"], outcomes["undelivered"]
    # This process's setting, else what the workers deliver to.
    target = callback or ", ".join(outcomes["listening"]) or "(no callback configured)"
    if target.startswith("(") and not waiting:
        return ""
    said = f"outcomes to {target}: {waiting} undelivered"
    if waiting:
        said += f" (oldest finished {outcomes['oldest_undelivered']}"
        said += f", {outcomes['retrying']} retrying)" if outcomes["retrying"] else ")"
    if outcomes["abandoned_24h"]:
        said += f"; {outcomes['abandoned_24h']} given up in the last 24 h"
    if error := outcomes["last_error"]:
        said += f"; last error, on {error['message_id']}: {error['error']}"
    return said


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Lines with their reputation, caps in use, queue, oldest message and estimate;
    waiting messages by reason; chats by health, messages by state."""
    with open_client() as client:
        data = client.status()
    if as_json:
        print_json(data)
        return
    from scheduler.store import reports

    out.print(_lines(data))
    for line in data["lines"]:
        for reason in reports.reasons(line["detail"]):
            # The provider's words: printed as they are, never read as Rich markup.
            out.print(
                f"  {line['number']}: {reason}", markup=False, highlight=False, soft_wrap=True
            )
        for reason in line["health_estimate"]["reasons"]:
            out.print(
                f"  {line['number']}: estimate {reason['status']}: {reason['text']}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    if any(line["oldest_waiting"] for line in data["lines"]):
        out.print(_oldest(data))
    out.print(_caps(data))
    if data["waiting"]["by_reason"]:
        out.print(_reasons(data))
    else:
        out.print("nothing waiting")
    if data["waiting"]["without_line"]:
        out.print(f"{data['waiting']['without_line']} waiting for a line to take them")
    if data["workers"]:
        out.print(workers_table(data["workers"]))
    if said := outcomes_line(data["outcomes"]):
        out.print(said, markup=False, highlight=False, soft_wrap=True)
    applied = data["policy"]["applied"]
    out.print(f"policy applied to held messages: {applied or '(none yet)'}", highlight=False)
    for title, counts in (
        ("chats by health", data["chats"]),
        ("messages by state", data["messages"]),
    ):
        table = Table("", "count", title=title)
        for name, count in sorted(counts.items()):
            table.add_row(*cells(name, count))
        out.print(table)
