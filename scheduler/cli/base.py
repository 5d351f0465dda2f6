"""What every command shares: the Typer apps, the consoles, a client per command, one-line
errors, and the parsing of times and durations."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer import _click
from typer.core import TyperGroup

from policies.durations import parse_duration as parse_duration
from policies.durations import parse_time as parse_time
from policies.errors import HealthgateError

if TYPE_CHECKING:
    from scheduler.client import Healthgate

# The commands import the client, the database and Redis when they run, never at start:
# ``healthgate --help`` costs little more than Python itself (see the CLI's import test).


def choice(kind: Iterable[StrEnum]) -> Callable[[str], str]:
    """The parser of an argument that takes one of ``kind``: a value in any case is that
    value; anything else is passed on as written, for the command to refuse in one line
    naming the field (and showing at most the first 100 characters of the value)."""

    def parse(value: str) -> str:
        for member in kind:
            if value.casefold() == member.value.casefold():
                return member.value
        return value

    return parse


def choices(kind: Iterable[StrEnum]) -> str:
    """``HEALTHY, AT_RISK or CRITICAL``: the values an argument takes, for its help."""
    *first, last = (member.value for member in kind)
    return f"{', '.join(first)} or {last}" if first else last


#: ``-h`` as well as ``--help`` on every command; subcommands inherit it from the root.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class Commands(TyperGroup):
    """The root group: what the environment refuses (a folder that cannot be written, a
    database or Redis that cannot be reached) ends the command in one line, exit code 2,
    never in a traceback that could quote a URL's password."""

    def invoke(self, ctx: _click.Context) -> Any:
        _fit_width()
        try:
            return super().invoke(ctx)
        except HealthgateError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(_file_problem(exc))
        except Exception as exc:
            problem = _service_failure(exc)
            if problem is None:
                raise
            fail(problem)


app = typer.Typer(
    cls=Commands,
    help="Outbound send scheduler gated on chat health and line reputation.",
    no_args_is_help=True,
    add_completion=False,
    context_settings=CONTEXT_SETTINGS,
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


def _show_version(wanted: bool) -> None:
    if wanted:
        try:
            installed = version("healthgate")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = "(not installed)"
        out.print(f"healthgate {installed}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False,
        "--version",
        callback=_show_version,
        is_eager=True,
        help="Print the installed version and exit.",
    ),
) -> None:
    """Outbound send scheduler gated on chat health and line reputation."""


def fail(message: str) -> NoReturn:
    """End the command with ``error: message`` on one line of stderr, exit code 2.

    The message is printed as text, never as Rich markup: it quotes what users, providers
    and webhooks wrote.
    """
    err.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def one_line(text: str) -> str:
    """``text`` with its lines joined: an error is one line, whatever a driver wrote."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _service_failure(exc: Exception) -> str | None:
    """What a database or Redis error, or a refused ``HEALTHGATE_*`` setting, says in one
    line; None for any other error.

    The libraries' error classes are looked up among the modules already loaded: an
    error of a library the command never imported cannot have been raised by it.
    """
    refused = getattr(sys.modules.get("pydantic_core"), "ValidationError", None)
    if refused is not None and isinstance(exc, refused) and exc.title == "Settings":
        from scheduler.settings import settings_problem

        return settings_problem(exc)
    dbapi = getattr(sys.modules.get("sqlalchemy.exc"), "DBAPIError", None)
    if dbapi is not None and isinstance(exc, dbapi):
        return _service_problem("the database", _setting("database"), exc.orig or exc)
    redis_error = getattr(sys.modules.get("redis.exceptions"), "RedisError", None)
    if redis_error is not None and isinstance(exc, redis_error):
        return _service_problem("Redis", _setting("redis_url"), exc)
    return None


def _setting(name: str) -> str | None:
    """A URL setting, or None when the settings themselves cannot be read."""
    from scheduler.settings import Settings

    try:
        value: str | None = getattr(Settings(), name)
    except Exception:  # the settings' own error was reported where it was raised
        return None
    return value


def _file_problem(exc: OSError) -> str:
    """``path: what is wrong``, and the setting that points there when one does."""
    path = exc.filename
    problem = exc.strerror or type(exc).__name__
    if path is None:
        return problem
    named = f"{path}: {problem}"
    from scheduler.settings import Settings

    try:
        settings = Settings()
    except Exception:
        return named
    failed = Path(str(path)).absolute()
    for setting, where in (
        ("HEALTHGATE_POLICY_FILE", settings.policy_file),
        ("HEALTHGATE_DATA_DIR", settings.data_dir),
        ("HEALTHGATE_SEND_LOG", settings.send_log_path),
    ):
        target = where.absolute()
        if failed == target or failed in target.parents:
            return f"{named} ({setting} is {where})"
    return named


def _service_problem(service: str, url: str | None, exc: BaseException) -> str:
    """``cannot use the database <masked URL>: <the driver's first line>``, with the
    URL's password removed from the driver's words too."""
    from sqlalchemy.engine import make_url

    from scheduler.settings import masked_url

    detail = one_line(str(exc)) or type(exc).__name__
    where = ""
    if url:
        where = f" {masked_url(url)}"
        try:
            password = make_url(url).password
        except Exception:
            password = None
        if password:
            detail = detail.replace(str(password), "***")
    return f"cannot use {service}{where}: {detail}"


@contextmanager
def open_client(migrate: bool = True) -> Iterator[Healthgate]:
    """A client for this command; every deliberate error becomes one line and exit code 2."""
    from scheduler.client import Healthgate
    from scheduler.settings import Settings

    try:
        client = Healthgate(Settings())
        try:
            if migrate:
                client.ensure_schema()
            yield client
        finally:
            client.close()
    except HealthgateError as exc:
        fail(str(exc))


def _fit_width() -> None:
    """Tables as wide as ``COLUMNS`` says, when it is set (a terminal's own width else):
    read when the command runs, not when the module was imported, so a script or a pipe
    that sets it gets whole rows."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        out.width = err.width = int(columns)


def cells(*values: object) -> list[Text]:
    """Table cells shown as they are: a Rich ``Table`` reads plain strings as markup, and
    ids, details and reasons come from users, providers and webhooks. None shows as ``-``."""
    return [Text("-" if value is None else str(value)) for value in values]


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data))
