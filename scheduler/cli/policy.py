"""The policy file."""

from __future__ import annotations

from pathlib import Path

import typer

from policies.config import load_policy
from scheduler.cli.base import (
    out,
    policy_app,
)
from scheduler.settings import Settings


@policy_app.command("check")
def policy_check(
    file: Path | None = typer.Argument(
        None, help="The policy file to check (default: HEALTHGATE_POLICY_FILE)."
    ),
) -> None:
    """Validate a policy file: prints ok, or the file, the key and what is wrong."""
    path = file or Settings().policy_file
    # A file that does not validate is named, with its key, in one line (``base.Commands``).
    policy = load_policy(path)
    out.print(f"ok ({len(policy.lines)} line(s))")
