"""What every command shares: the Typer apps, the consoles, a client per command, and
the parsing of times and durations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from policies.errors import HealthgateError, InvalidInput
from scheduler.client import Healthgate
from scheduler.settings import Settings

app = typer.Typer(
    help="Outbound send scheduler gated on chat health and line reputation.",
    no_args_is_help=True,
    add_completion=False,
    # A crash report must not print local variables: they can hold keys and message bodies.
    pretty_exceptions_show_locals=False,
)
policy_app = typer.Typer(help="Check and show the policy file.", no_args_is_help=True)
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


def parse_time(value: str | None, field: str) -> datetime | None:
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


def parse_duration(value: str, field: str) -> timedelta:
    found = _DURATION.fullmatch(value.strip())
    if found is None:
        raise InvalidInput(field, value, "is not a duration such as 30d, 12h, 90m or 45s")
    age = timedelta(**{_UNITS[found[2]]: int(found[1])})
    if not age:
        raise InvalidInput(field, value, "is zero: say how old, such as 30d")
    if age > _LONGEST:
        raise InvalidInput(field, value, "is longer than 100 years")
    return age


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))
