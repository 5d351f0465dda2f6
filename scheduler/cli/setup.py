"""Setting up and running: init, run, web, db upgrade."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from policies.errors import HealthgateError
from scheduler import constants
from scheduler.cli.base import (
    app,
    db_app,
    err,
    fail,
    open_client,
    out,
)

if TYPE_CHECKING:
    from scheduler.settings import Settings


@app.command()
def init(
    force: bool = typer.Option(False, help="Overwrite an existing policy file."),
) -> None:
    """Write a commented starter policy file, create the database, and write an API token
    to the data directory unless HEALTHGATE_API_TOKEN is set."""
    from scheduler import access
    from scheduler.settings import Settings, masked_url

    settings = Settings()
    path = settings.policy_file
    if path.exists() and not force:
        err.print(
            f"[yellow]{escape(str(path))} exists; kept it (use --force to overwrite)[/yellow]"
        )
    else:
        path.write_text(files("policies").joinpath("starter.toml").read_text(encoding="utf-8"))
        out.print(f"wrote {path}", markup=False)
    with open_client(migrate=False) as client:
        client.migrate()
    out.print(f"database ready: {masked_url(settings.database)}", highlight=False)
    written = access.new_api_token(settings)
    if written is not None:
        out.print(
            f"wrote an API token to {written} (mode 0600): the status page and the JSON "
            "reads take it; HEALTHGATE_API_TOKEN replaces it",
            markup=False,
            highlight=False,
        )


@app.command()
def run(
    concurrency: int = typer.Option(2, min=1, help="Worker processes."),
    web: bool = typer.Option(True, "--web/--no-web", help="Start the web process too."),
) -> None:
    """Start the main job: a Celery worker, beat and the web process, until interrupted."""
    from scheduler import runner
    from scheduler.settings import Settings, masked_url

    settings = Settings()
    if web:
        refuse_exposure(settings)
    with open_client() as client:
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
        where = (
            "HEALTHGATE_API_TOKEN"
            if settings.api_token
            else "the token in " + str(settings.data_dir / constants.API_TOKEN_FILE)
        )
        out.print(
            f"web: http://{settings.web_host}:{settings.web_port} (sign in with {where})",
            markup=False,
            highlight=False,
        )
    else:
        del processes["web"]
    raise typer.Exit(runner.supervise(processes, runner.environment(settings)))


@app.command("web")
def web_command() -> None:
    """Serve Linq webhooks and read-only JSON (HEALTHGATE_WEB_HOST, HEALTHGATE_WEB_PORT).

    Reads need HEALTHGATE_API_TOKEN, and beyond loopback the process will not start without it.
    """
    import uvicorn

    from scheduler.settings import Settings

    settings = Settings()
    refuse_exposure(settings)
    uvicorn.run(
        "scheduler.web:create_app", factory=True, host=settings.web_host, port=settings.web_port
    )


def refuse_exposure(settings: Settings) -> None:
    """Stop, with the setting named, before the web process would face the network
    unguarded, or start with a webhook secret no delivery could verify under."""
    from scheduler import access
    from scheduler.signals.webhooks.inbox import check_secrets

    try:
        access.check_exposure(settings)
        check_secrets(settings.linq_webhook_secret)
    except HealthgateError as exc:
        fail(str(exc))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    with open_client(migrate=False) as client:
        client.migrate()
    out.print("schema up to date")
