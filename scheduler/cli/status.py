"""How the lines, chats and messages stand."""

from __future__ import annotations

import typer
from rich.table import Table

from scheduler.cli.base import (
    app,
    cells,
    open_client,
    out,
    print_json,
)
from scheduler.store import reports


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
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
            *cells(
                line["number"],
                line["provider"],
                line["reputation"],
                line["reputation_updated_at"],
                state,
                line["dispatched_24h"],
            )
        )
    out.print(lines)
    for line in data["lines"]:
        for reason in reports.reasons(line["detail"]):
            out.print(
                f"  {line['number']}: {reason}", markup=False, highlight=False, soft_wrap=True
            )
    for title, counts in (
        ("chats by health", data["chats"]),
        ("messages by state", data["messages"]),
    ):
        table = Table("", "count", title=title)
        for name, count in sorted(counts.items()):
            table.add_row(*cells(name, count))
        out.print(table)
