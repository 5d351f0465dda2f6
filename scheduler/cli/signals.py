"""Signals: webhook events, provider polls, inbound messages, health by hand."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from policies.errors import InvalidInput
from scheduler.cli.base import (
    app,
    err,
    health_app,
    open_client,
    out,
    parse_time,
    print_json,
)
from scheduler.store import listing


@app.command()
def events(
    outcome: str | None = typer.Option(None, help="applied, ignored or rejected."),
    limit: int = typer.Option(20, min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="Include each event's payload."),
) -> None:
    """Webhook events received, newest first, with what became of each and why."""
    with open_client() as client, client.runtime.reads() as session:
        if outcome not in (None, "applied", "ignored", "rejected"):
            raise InvalidInput("outcome", outcome, "is not one of applied, ignored, rejected")
        data = listing.events(session, outcome, limit, with_payload=as_json)
    if as_json:
        print_json(data)
        return
    table = Table("received", "event", "type", "outcome", "detail", title="webhook events")
    for e in data:
        table.add_row(e["received_at"], e["id"], e["event_type"] or "", e["outcome"], e["detail"])
    out.print(table)


@app.command()
def poll(as_json: bool = typer.Option(False, "--json")) -> None:
    """Ask every provider once how the lines stand, apply what changed, then exit."""
    with open_client() as client:
        report = client.poll()
    if as_json:
        print_json({"counts": report.counts, "errors": report.errors})
    else:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
        out.print(f"polled: {summary or 'no provider lines'}")
        for problem in report.errors:
            err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(1)


@app.command()
def inbound(
    line: str,
    recipient: str,
    text: str,
    at: str | None = typer.Option(None, help="When the recipient sent it (ISO 8601); now."),
) -> None:
    """Record a message from a recipient: a reply, an opt-out or an opt-in keyword."""
    with open_client() as client:
        kind = client.record_inbound(line, recipient, text, parse_time(at, "at"))
    out.print(f"inbound from {recipient}: {kind.value}")


@health_app.command("chat")
def health_chat(line: str, recipient: str, status: str) -> None:
    """Set a chat's health: HEALTHY, AT_RISK, CRITICAL or OPTED_OUT."""
    with open_client() as client:
        client.set_chat_health(line, recipient, status)
    out.print(f"chat {line} → {recipient}: {status}")


@health_app.command("line")
def health_line(line: str, status: str) -> None:
    """Set a line's reputation (HEALTHY, AT_RISK, CRITICAL) or status (ACTIVE, FLAGGED)."""
    with open_client() as client:
        client.set_line_health(line, status)
    out.print(f"line {line}: {status}")
