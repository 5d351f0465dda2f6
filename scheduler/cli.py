"""The `healthgate` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from policies.config import load_policy
from policies.errors import HealthgateError, InvalidInput
from scheduler import access, runner
from scheduler.client import Healthgate
from scheduler.settings import Settings, masked_url
from scheduler.signals.webhooks.inbox import check_secrets
from scheduler.store import listing, reports

app = typer.Typer(
    help="Outbound send scheduler gated on chat health and line reputation.",
    no_args_is_help=True,
    add_completion=False,
    # A crash report must not print local variables: they can hold keys and message bodies.
    pretty_exceptions_show_locals=False,
)
policy_app = typer.Typer(help="Check the policy file.", no_args_is_help=True)
health_app = typer.Typer(help="Set health by hand.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(health_app, name="health")
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)


@contextmanager
def _client(migrate: bool = True) -> Iterator[Healthgate]:
    """A client for this command; every deliberate error becomes one line and exit code 2."""
    try:
        client = Healthgate(Settings())
        try:
            if migrate:
                client.ensure_schema()
            yield client
        finally:
            client.close()
    except HealthgateError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, value, "is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise InvalidInput(field, value, "needs a timezone, e.g. 2026-11-22T09:00:00+00:00")
    return moment


#: ``30d``, ``12h``, ``90m``, ``45s``: a whole number and its unit.
_DURATION = re.compile(r"([0-9]{1,9})([dhms])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
#: Past this, ``now - age`` would leave the calendar; no retention is meant that long.
_LONGEST = timedelta(days=36_500)


def _duration(value: str, field: str) -> timedelta:
    found = _DURATION.fullmatch(value.strip())
    if found is None:
        raise InvalidInput(field, value, "is not a duration such as 30d, 12h, 90m or 45s")
    age = timedelta(**{_UNITS[found[2]]: int(found[1])})
    if not age:
        raise InvalidInput(field, value, "is zero: say how old, such as 30d")
    if age > _LONGEST:
        raise InvalidInput(field, value, "is longer than 100 years")
    return age


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data))


@app.command()
def init(
    force: bool = typer.Option(False, help="Overwrite an existing policy file."),
) -> None:
    """Write a commented starter policy file and create the database."""
    settings = Settings()
    path = settings.policy_file
    if path.exists() and not force:
        err.print(f"[yellow]{path} exists; kept it (use --force to overwrite)[/yellow]")
    else:
        path.write_text(files("policies").joinpath("starter.toml").read_text(encoding="utf-8"))
        out.print(f"wrote {path}")
    with _client(migrate=False) as client:
        client.migrate()
    out.print(f"database ready: {masked_url(settings.database)}", highlight=False)


@app.command()
def run(
    concurrency: int = typer.Option(2, min=1, help="Worker processes."),
    web: bool = typer.Option(True, "--web/--no-web", help="Start the web process too."),
) -> None:
    """Start the main job: a Celery worker, beat and the web process, until interrupted."""
    settings = Settings()
    if web:
        _refuse_exposure(settings)
    with _client() as client:
        lines = len(client.runtime.policy.lines)
    limits = masked_url(settings.redis_url) if settings.redis_url else "the database"
    out.print(
        f"healthgate: {lines} line(s), database {masked_url(settings.database)}, "
        f"broker {masked_url(settings.broker)}, caps counted in {limits}",
        highlight=False,
        soft_wrap=True,
    )
    processes = runner.commands(settings, concurrency)
    if web:
        out.print(f"web: http://{settings.web_host}:{settings.web_port}", highlight=False)
    else:
        del processes["web"]
    raise typer.Exit(runner.supervise(processes))


@app.command("web")
def web_command() -> None:
    """Serve Linq webhooks and read-only JSON (HEALTHGATE_WEB_HOST, HEALTHGATE_WEB_PORT).

    Reads need HEALTHGATE_API_TOKEN, and beyond loopback the process will not start without it.
    """
    import uvicorn

    settings = Settings()
    _refuse_exposure(settings)
    uvicorn.run(
        "scheduler.web:create_app", factory=True, host=settings.web_host, port=settings.web_port
    )


def _refuse_exposure(settings: Settings) -> None:
    """Stop, with the setting named, before the web process would face the network
    unguarded, or start with a webhook secret no delivery could verify under."""
    try:
        access.check_exposure(settings)
        check_secrets(settings.linq_webhook_secret)
    except HealthgateError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def events(
    outcome: str | None = typer.Option(None, help="applied, ignored or rejected."),
    limit: int = typer.Option(20, min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="Include each event's payload."),
) -> None:
    """Webhook events received, newest first, with what became of each and why."""
    with _client() as client, client.runtime.reads() as session:
        if outcome not in (None, "applied", "ignored", "rejected"):
            raise InvalidInput("outcome", outcome, "is not one of applied, ignored, rejected")
        data = listing.events(session, outcome, limit, with_payload=as_json)
    if as_json:
        _print_json(data)
        return
    table = Table("received", "event", "type", "outcome", "detail", title="webhook events")
    for e in data:
        table.add_row(e["received_at"], e["id"], e["event_type"] or "", e["outcome"], e["detail"])
    out.print(table)


@app.command()
def enqueue(
    to: str = typer.Option(..., help="Recipient, E.164."),
    body: str = typer.Option(..., help="Message text."),
    line: str | None = typer.Option(None, help="Sending line, E.164 (default: routed)."),
    chat_id: str | None = typer.Option(None, help="The provider's chat id, if known."),
    key: str | None = typer.Option(None, "--idempotency-key", help="Deduplication key."),
    send_at: str | None = typer.Option(None, help="Not before this ISO 8601 time."),
    expires_at: str | None = typer.Option(None, help="Drop if not sent by this ISO 8601 time."),
) -> None:
    """Enqueue one message and print its id."""
    with _client() as client:
        message_id = client.enqueue(
            to, body, line, chat_id, key, _time(send_at, "send_at"), _time(expires_at, "expires_at")
        )
    out.print(message_id, highlight=False)


@app.command()
def drain(as_json: bool = typer.Option(False, "--json")) -> None:
    """Dispatch everything due now in this process, then exit."""
    with _client() as client:
        report = client.drain()
    if as_json:
        _print_json(report.counts)
    else:
        summary = ", ".join(f"{k.lower()} {v}" for k, v in sorted(report.counts.items()))
        out.print(f"drained: {summary or 'nothing due'}")


@app.command()
def poll(as_json: bool = typer.Option(False, "--json")) -> None:
    """Ask every provider once how the lines stand, apply what changed, then exit."""
    with _client() as client:
        report = client.poll()
    if as_json:
        _print_json({"counts": report.counts, "errors": report.errors})
    else:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
        out.print(f"polled: {summary or 'no provider lines'}")
        for problem in report.errors:
            err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(1)


@app.command()
def purge(
    older_than: str | None = typer.Option(
        None, help="Age past which to purge, e.g. 30d or 12h (default: HEALTHGATE_RETENTION_DAYS)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Empty the bodies of finished messages and of webhook events older than that now;
    decisions, states and times are kept."""
    with _client() as client:
        age = None if older_than is None else _duration(older_than, "--older-than")
        purged = client.purge(age)
    if as_json:
        _print_json(purged._asdict())
    else:
        out.print(
            f"purged: {purged.messages} message bodies, {purged.webhook_events} webhook bodies"
        )


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Lines with their reputation, chats by health, messages by state."""
    with _client() as client:
        data = client.status()
    if as_json:
        _print_json(data)
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


@app.command()
def explain(message_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every decision taken on a message, with time and reason."""
    with _client() as client:
        data = client.explain(message_id)
    if as_json:
        _print_json(data)
        return
    out.print(
        f"{data['id']} to {data['to']} on {data['line'] or '(no line yet)'}: "
        f"[bold]{data['state']}[/bold]",
        highlight=False,
    )
    held = data.get("line_health")
    if held:
        out.print(
            f"  held by its line: reputation {held['reputation']} "
            f"(since {held['reputation_updated_at'] or '-'}), status {held['status']}",
            highlight=False,
        )
        for reason in reports.reasons(held["detail"]):
            out.print(f"    {reason}", highlight=False, soft_wrap=True)
    for d in data["decisions"]:
        until = f" (until {d['not_before']})" if d["not_before"] else ""
        again = f"; taken {d['repeats']} more time(s), last {d['last_at']}" if d["repeats"] else ""
        out.print(
            f"  {d['at']}  {d['action']:<8} {d['code']}: {d['reason']}{until}{again}",
            highlight=False,
            soft_wrap=True,
        )


@policy_app.command("check")
def policy_check(
    file: Path | None = typer.Argument(None, help="Default: the settings' file."),
) -> None:
    """Validate a policy file: prints ok, or the file, the key and what is wrong."""
    path = file or Settings().policy_file
    try:
        policy = load_policy(path)
    except HealthgateError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    out.print(f"ok ({len(policy.lines)} line(s))")


@health_app.command("chat")
def health_chat(line: str, recipient: str, status: str) -> None:
    """Set a chat's health: HEALTHY, AT_RISK, CRITICAL or OPTED_OUT."""
    with _client() as client:
        client.set_chat_health(line, recipient, status)
    out.print(f"chat {line} → {recipient}: {status}")


@health_app.command("line")
def health_line(line: str, status: str) -> None:
    """Set a line's reputation (HEALTHY, AT_RISK, CRITICAL) or status (ACTIVE, FLAGGED)."""
    with _client() as client:
        client.set_line_health(line, status)
    out.print(f"line {line}: {status}")


@app.command()
def inbound(
    line: str,
    recipient: str,
    text: str,
    at: str | None = typer.Option(None, help="When the recipient sent it (ISO 8601); now."),
) -> None:
    """Record a message from a recipient: a reply, an opt-out or an opt-in keyword."""
    with _client() as client:
        kind = client.record_inbound(line, recipient, text, _time(at, "at"))
    out.print(f"inbound from {recipient}: {kind.value}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    with _client(migrate=False) as client:
        client.migrate()
    out.print("schema up to date")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # healthgate's own processes (and the worker and beat ``run`` starts) make every file
    # the owner's only, including those others' code makes in the data directory: the
    # beat schedule and the folder broker's messages. Inside an application's process
    # healthgate leaves the umask alone (see ``scheduler.files``).
    os.umask(0o077)
    app()


if __name__ == "__main__":
    main()
