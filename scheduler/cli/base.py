"""What every command shares: the Typer apps, the consoles, a client per command, and
the parsing of times and durations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from policies.durations import parse_duration as parse_duration
from policies.durations import parse_time as parse_time
from policies.errors import HealthgateError
from scheduler.client import Healthgate
from scheduler.settings import Settings

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
def open_client(migrate: bool = True) -> Iterator[Healthgate]:
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


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))
