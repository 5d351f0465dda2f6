"""The policy file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from policies.config import load_policy
from policies.errors import HealthgateError
from scheduler.cli.base import (
    err,
    out,
    policy_app,
)
from scheduler.settings import Settings


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
