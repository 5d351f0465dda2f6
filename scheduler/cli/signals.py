"""Signals: webhook events, provider polls, inbound messages, health by hand."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from policies.errors import InvalidInput
from policies.statuses import LINE_STATES, ChatHealth
from scheduler.cli.base import (
    app,
    cells,
    choice,
    choices,
    err,
    health_app,
    open_client,
    out,
    parse_time,
    print_json,
)
from scheduler.signals.webhooks.outcomes import STORED_OUTCOMES


@app.command()
def events(
    outcome: str | None = typer.Option(
        None,
        parser=choice(STORED_OUTCOMES),
        metavar="OUTCOME",
        help=f"Only the events with this outcome: {choices(STORED_OUTCOMES)}, in any case.",
    ),
    limit: int = typer.Option(20, min=1, max=1000, help="At most this many events."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON, with each event's payload, instead of a table."
    ),
) -> None:
    """Webhook events received, newest first, with what became of each and why."""
    from scheduler.store import listing

    with open_client() as client, client.runtime.reads() as session:
        if outcome is not None and outcome not in STORED_OUTCOMES:
            raise InvalidInput("outcome", outcome, f"is not one of {', '.join(STORED_OUTCOMES)}")
        data = listing.events(session, outcome, limit, with_payload=as_json)
    if as_json:
        print_json(data)
        return
    table = Table("received", "event", "type", "outcome", "detail", title="webhook events")
    for e in data:
        table.add_row(*cells(e["received_at"], e["id"], e["event_type"], e["outcome"], e["detail"]))
    out.print(table)


@app.command()
def poll(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
) -> None:
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
    line: str = typer.Argument(..., help="The line it was sent to, E.164."),
    recipient: str = typer.Argument(..., help="Who sent it, E.164."),
    text: str = typer.Argument(..., help="What they wrote."),
    at: str | None = typer.Option(
        None, help="When the recipient sent it (ISO 8601; default: now)."
    ),
) -> None:
    """Record a message from a recipient: a reply, an opt-out or an opt-in keyword."""
    with open_client() as client:
        kind = client.record_inbound(line, recipient, text, parse_time(at, "at"))
    out.print(f"inbound from {recipient}: {kind.value}", markup=False, highlight=False)


@health_app.command("chat")
def health_chat(
    line: str = typer.Argument(..., help="The chat's line, E.164."),
    recipient: str = typer.Argument(..., help="The chat's recipient, E.164."),
    status: str = typer.Argument(
        ...,
        parser=choice(ChatHealth),
        metavar="STATUS",
        help=f"The chat's health: {choices(ChatHealth)}, in any case.",
    ),
) -> None:
    """Set a chat's health: HEALTHY, AT_RISK, CRITICAL or OPTED_OUT."""
    with open_client() as client:
        client.set_chat_health(line, recipient, status)
    out.print(f"chat {line} → {recipient}: {status}", markup=False, highlight=False)


@health_app.command("line")
def health_line(
    line: str = typer.Argument(..., help="The line, E.164."),
    status: str = typer.Argument(
        ...,
        parser=choice(LINE_STATES),
        metavar="STATUS",
        help=f"A reputation, or a status at the provider: {choices(LINE_STATES)}, in any case.",
    ),
) -> None:
    """Set a line's reputation (HEALTHY, AT_RISK, CRITICAL) or status (ACTIVE, FLAGGED)."""
    with open_client() as client:
        client.set_line_health(line, status)
    out.print(f"line {line}: {status}", markup=False, highlight=False)
