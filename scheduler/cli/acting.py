"""Acting on messages by hand: cancel, release, retry; each recorded with who asked."""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING

import typer

from scheduler.cli.base import app, open_client, out, print_json

if TYPE_CHECKING:
    from scheduler.operate import Acted


def actor(given: str | None) -> str:
    """Who asks: ``--actor`` as given, else ``cli:`` and the operating system's user."""
    if given is not None:
        return given
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        # No user name known to the system (a container without one in /etc/passwd).
        return "cli:unknown"


ActorOption = typer.Option(None, "--actor", help="Who asks (default: cli:<your user name>).")
ReasonOption = typer.Option(None, "--reason", help="Why, kept on each message's decision.")


def _report(verb: str, acted: Acted, as_json: bool) -> None:
    if as_json:
        print_json({verb: acted.changed, "unchanged": acted.unchanged})
        return
    already = f" ({len(acted.unchanged)} already {verb})" if acted.unchanged else ""
    out.print(f"{verb}: {len(acted.changed)}{already}", highlight=False)
    for message_id in acted.changed:
        out.print(f"  {message_id}", highlight=False, markup=False)


@app.command()
def cancel(
    message_id: str | None = typer.Argument(None, help="The message's id."),
    key: str | None = typer.Option(None, "--idempotency-key", help="The enqueue's key."),
    to: str | None = typer.Option(None, help="Every waiting message to this recipient."),
    line: str | None = typer.Option(None, help="With --to: only on this line."),
    reason: str | None = ReasonOption,
    who: str | None = ActorOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Cancel messages not yet sending: one by id or key, or every waiting one to a
    recipient. A message already sending or finished is refused (exit 2)."""
    with open_client() as client:
        acted = client.cancel(
            message_id,
            idempotency_key=key,
            to=to,
            line=line,
            reason=reason,
            actor=actor(who),
        )
    _report("cancelled", acted, as_json)


@app.command()
def release(
    line: str | None = typer.Option(None, help="Only this line's held messages."),
    to: str | None = typer.Option(None, help="Only this recipient's (with --line: one chat)."),
    code: str | None = typer.Option(
        None, "--code", help="Only messages held by this code, e.g. cap_sends_per_minute."
    ),
    reason: str | None = ReasonOption,
    who: str | None = ActorOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Let the gate look again now at held (throttled or deferred) messages, after a
    policy change say; prints how many."""
    with open_client() as client:
        released = client.release(line, to, code, reason=reason, actor=actor(who))
    if as_json:
        print_json({"released": released})
    else:
        out.print(f"released: {len(released)}", highlight=False)


@app.command()
def retry(
    message_id: str | None = typer.Argument(None, help="The message's id."),
    code: str | None = typer.Option(
        None, "--code", help="Every failed or needs_review message of this code."
    ),
    reason: str | None = ReasonOption,
    who: str | None = ActorOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Send failed or needs_review messages again, after a person has looked, with the
    same provider idempotency key."""
    with open_client() as client:
        acted = client.retry(message_id, reason_code=code, reason=reason, actor=actor(who))
    _report("retried", acted, as_json)
