"""Messages: enqueue, drain, explain, purge."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from policies.statuses import DEFAULT_CATEGORY
from scheduler.cli.base import (
    app,
    open_client,
    out,
    parse_duration,
    parse_time,
    print_json,
)


@app.command()
def enqueue(
    to: str = typer.Option(..., help="Recipient, E.164."),
    body: str = typer.Option(..., help="Message text."),
    line: str | None = typer.Option(None, help="Sending line, E.164 (default: routed)."),
    chat_id: str | None = typer.Option(None, help="The provider's chat id, if known."),
    key: str | None = typer.Option(None, "--idempotency-key", help="Deduplication key."),
    send_at: str | None = typer.Option(None, help="Not before this ISO 8601 time."),
    expires_at: str | None = typer.Option(None, help="Drop if not sent by this ISO 8601 time."),
    category: str = typer.Option(
        DEFAULT_CATEGORY,
        help="transactional (any time, first), marketing (in the recipient's day hours), "
        "or a category the policy defines.",
    ),
    recipient_tz: str | None = typer.Option(
        None, help="The recipient's IANA time zone (default: from the number)."
    ),
) -> None:
    """Enqueue one message and print its id."""
    with open_client() as client:
        message_id = client.enqueue(
            to,
            body,
            line,
            chat_id,
            key,
            parse_time(send_at, "send_at"),
            parse_time(expires_at, "expires_at"),
            category=category,
            recipient_tz=recipient_tz,
        )
    out.print(message_id, markup=False, highlight=False)


@app.command()
def drain(
    as_json: bool = typer.Option(False, "--json", help="Print JSON counts instead of a summary."),
) -> None:
    """Dispatch everything due now in this process, then exit."""
    with open_client() as client:
        report = client.drain()
    if as_json:
        print_json(report.counts)
    else:
        summary = ", ".join(f"{k.lower()} {v}" for k, v in sorted(report.counts.items()))
        out.print(f"drained: {summary or 'nothing due'}")


@app.command()
def explain(
    message_id: str = typer.Argument(..., help="The message's id, as enqueue printed it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Every decision taken on a message, with time and reason."""
    with open_client() as client:
        data = client.explain(message_id)
    if as_json:
        print_json(data)
        return
    from scheduler.store import reports

    out.print(
        f"{escape(data['id'])} to {escape(data['to'])} on "
        f"{escape(data['line'] or '(no line yet)')}: [bold]{escape(data['state'])}[/bold]",
        highlight=False,
    )
    hours = data.get("sending_hours")
    if hours:
        zones = ", ".join(hours["time_zones"]) or "(unknown)"
        window = hours["window"]
        if window != "any time":
            window += f" recipient time, in {zones}"
        line_hours = f"; line hours {hours['line_hours']}" if hours["line_hours"] else ""
        out.print(
            f"  {data['category']} (priority {data['priority']}): {window}{line_hours}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    held = data.get("line_health")
    if held:
        out.print(
            f"  held by its line: reputation {held['reputation']} "
            f"(since {held['reputation_updated_at'] or '-'}), status {held['status']}",
            markup=False,
            highlight=False,
        )
        for reason in reports.reasons(held["detail"]):
            out.print(f"    {reason}", markup=False, highlight=False, soft_wrap=True)
    for what, health in (data.get("health") or {}).items():
        if what == "early_warning":
            continue
        reasons = "; ".join(r["text"] for r in health["estimate"]["reasons"])
        out.print(
            f"  {what}: provider {health['provider']}, healthgate's estimate "
            f"{health['estimate']['status']}"
            + (f" ({reasons})" if reasons else "")
            + f" [early warning {data['health']['early_warning']}]",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for d in data["decisions"]:
        until = f" (until {d['not_before']})" if d["not_before"] else ""
        again = f"; taken {d['repeats']} more time(s), last {d['last_at']}" if d["repeats"] else ""
        by = f" [asked by {d['actor']}]" if d.get("actor") else ""
        out.print(
            f"  {d['at']}  {d['action']:<8} {d['code']}: {d['reason']}{until}{again}{by}",
            highlight=False,
            # Reasons and actors may quote what a person or a provider wrote.
            markup=False,
            soft_wrap=True,
        )
    for told in data["outcomes"]:
        out.print(f"  outcome {told['state']}: {_told(told)}", markup=False, highlight=False)


def _told(outcome: dict[str, Any]) -> str:
    """How the delivery of one outcome to the application's callback stands."""
    if outcome["delivered_at"]:
        return f"told to the application at {outcome['delivered_at']}"
    if outcome["abandoned_at"]:
        return f"given up at {outcome['abandoned_at']} ({outcome['last_error']})"
    tried = f", {outcome['attempts']} attempt(s) failed: {outcome['last_error']}"
    return f"not told yet, next try at {outcome['next_attempt_at']}" + (
        tried if outcome["attempts"] else ""
    )


@app.command()
def purge(
    older_than: str | None = typer.Option(
        None, help="Age past which to purge, e.g. 30d or 12h (default: HEALTHGATE_RETENTION_DAYS)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON counts instead of a summary."),
) -> None:
    """Empty the bodies of finished messages and of webhook events older than that now;
    decisions, states and times are kept."""
    with open_client() as client:
        age = None if older_than is None else parse_duration(older_than, "--older-than")
        purged = client.purge(age)
    if as_json:
        print_json(purged._asdict())
    else:
        out.print(
            f"purged: {purged.messages} message bodies, {purged.webhook_events} webhook bodies, "
            f"{purged.workers} worker(s) gone, {purged.outcomes} outcome(s) forgotten",
            soft_wrap=True,
        )
