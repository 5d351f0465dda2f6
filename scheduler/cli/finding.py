"""Finding messages: `healthgate messages` with filters, as a table or JSON."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from scheduler import constants
from scheduler.cli.base import app, open_client, out, print_json
from scheduler.store.states import WAITING_STATES, MessageState

_WAITING = {state.value for state in WAITING_STATES}


@app.command("messages")
def find(
    to: str | None = typer.Option(None, help="Recipient, E.164."),
    line: str | None = typer.Option(None, help="Sending line, E.164."),
    state: str | None = typer.Option(
        None, help=f"One of {', '.join(s.value for s in MessageState)} (any case)."
    ),
    reason: str | None = typer.Option(
        None, help="The last decision's code, e.g. cap_sends_per_minute or chat_critical."
    ),
    key: str | None = typer.Option(None, "--idempotency-key", help="The enqueue's key."),
    newer_than: str | None = typer.Option(
        None, help="Created within this age (30m, 2d) or since this ISO 8601 time."
    ),
    older_than: str | None = typer.Option(
        None, help="Created longer ago than this age, or before this ISO 8601 time."
    ),
    limit: int = typer.Option(constants.LIST_LIMIT, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Find messages by recipient, line, state, reason, key or age, newest first."""
    with open_client() as client:
        found = client.messages(
            to=to,
            line=line,
            state=state,
            reason=reason,
            idempotency_key=key,
            newer_than=newer_than,
            older_than=older_than,
            limit=limit,
        )
    if as_json:
        print_json(found)
        return
    table = Table("id", "to", "line", "state", "reason", "not_before", "created")
    for m in found:
        # When it is expected to go: a waiting message's not_before; none once it left.
        expected = m["not_before"] if m["state"] in _WAITING else None
        cells = (m["id"], m["to"], m["line"], m["state"], m["code"], expected, m["created_at"])
        # Text, never markup: the values are stored data (reason codes, numbers).
        table.add_row(*(Text(cell or "-") for cell in cells))
    out.print(table, highlight=False)
    more = f" (the newest {limit}: --limit shows more)" if len(found) == limit else ""
    out.print(f"{len(found)} message(s){more}", highlight=False)
