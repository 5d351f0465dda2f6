"""The policy file: check it, and show the policy in force."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from scheduler.cli.base import (
    out,
    policy_app,
    print_json,
)

if TYPE_CHECKING:
    from policies.config import Policy


def _load(file: Path | None) -> Policy:
    """The policy of ``file`` (default: the settings' file). A file that does not validate
    is named, with its key, in one line and exit 2 (``base.Commands``)."""
    from policies.config import load_policy
    from scheduler.settings import Settings

    return load_policy(file or Settings().policy_file)


@policy_app.command("check")
def policy_check(
    file: Path | None = typer.Argument(
        None, help="The policy file to check (default: HEALTHGATE_POLICY_FILE)."
    ),
) -> None:
    """Validate a policy file: prints ok, or the file, the key and what is wrong."""
    policy = _load(file)
    out.print(f"ok ({len(policy.lines)} line(s))")


@policy_app.command("show")
def policy_show(
    file: Path | None = typer.Argument(
        None, help="The policy file to show (default: HEALTHGATE_POLICY_FILE)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML."),
) -> None:
    """The policy in force, every default filled in, and its fingerprint."""
    from policies.changes import fingerprint, normalised

    normal = normalised(_load(file))
    mark = fingerprint(normal)
    if as_json:
        print_json({"fingerprint": mark, "policy": normal})
        return
    # The file names environment variables, never keys: nothing here is a secret.
    out.print(
        f"# fingerprint {mark}\n{as_toml(normal)}", markup=False, highlight=False, soft_wrap=True
    )


def as_toml(normal: dict[str, Any]) -> str:
    """A normal form as a policy file that loads back to the same policy."""
    lines = [{"number": number, **_present(config)} for number, config in normal["lines"].items()]
    sections = {key: _present(value) for key, value in normal.items() if key != "lines"}
    import tomli_w

    return tomli_w.dumps({"lines": lines, **sections})


def _present(table: dict[str, Any]) -> dict[str, Any]:
    """``table`` without the keys left unset (TOML has no null)."""
    return {
        key: _present(value) if isinstance(value, dict) else value
        for key, value in table.items()
        if value is not None
    }
