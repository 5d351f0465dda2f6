"""How the lines, chats and messages stand."""

from __future__ import annotations

import typer
from rich.table import Table

from scheduler.cli.base import (
    app,
    open_client,
    out,
    print_json,
)
from scheduler.store import reports


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Lines with their reputation, chats by health, messages by state."""
    with open_client() as client:
        data = client.status()
    if as_json:
        print_json(data)
        return
    lines = Table("line", "provider", "reputation", "since", "status", "sent 24h", title="lines")
    for line in data["lines"]:
        state = line["status"] if line["enabled"] else f"{line['status']} (not declared)"
        lines.add_row(
            line["number"],
            line["provider"],
            line["reputation"],
            line["reputation_updated_at"] or "-",
            state,
            str(line["dispatched_24h"]),
        )
    out.print(lines)
    for line in data["lines"]:
        for reason in reports.reasons(line["detail"]):
            out.print(f"  {line['number']}: {reason}", highlight=False, soft_wrap=True)
    for title, counts in (
        ("chats by health", data["chats"]),
        ("messages by state", data["messages"]),
    ):
        table = Table("", "count", title=title)
        for name, count in sorted(counts.items()):
            table.add_row(name, str(count))
        out.print(table)
