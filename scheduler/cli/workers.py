"""Workers: the policy each one runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import typer
from rich.table import Table

from scheduler.cli.base import app, cells, open_client, out, print_json


@app.command("workers")
def list_workers(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Each worker process, the policy fingerprint it runs and when it was last seen."""
    from scheduler.runtime import utcnow
    from scheduler.store.reports import policy_in_force

    with open_client() as client, client.runtime.reads() as session:
        applied_fingerprint, listed = policy_in_force(
            session, utcnow(), client.runtime.settings.tick
        )
    if as_json:
        print_json({"applied": applied_fingerprint, "workers": listed})
        return
    if listed:
        out.print(workers_table(listed))
    else:
        out.print("no worker seen yet: a worker records itself at its first tick")
    out.print(
        f"policy applied to held messages: {applied_fingerprint or '(none yet)'}", highlight=False
    )


def workers_table(found: Sequence[Mapping[str, Any]]) -> Table:
    """Each worker (as JSON shows it), the fingerprint it runs, when it was last seen,
    and what is amiss."""
    table = Table("worker", "policy", "last seen", "", title="workers")
    for worker in found:
        notes = [
            note
            for note, on in (("stale", worker["stale"]), ("not applied", not worker["applied"]))
            if on
        ]
        # Worker names come from the hosts: shown as text, never read as markup.
        table.add_row(
            *cells(worker["name"], worker["fingerprint"], worker["last_seen"], ", ".join(notes))
        )
    return table
