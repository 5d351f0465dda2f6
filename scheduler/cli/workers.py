"""Workers: the policy each one runs."""

from __future__ import annotations

from datetime import timedelta

import typer
from rich.table import Table
from rich.text import Text

from scheduler.cli.base import app, open_client, out, print_json
from scheduler.runtime import utcnow
from scheduler.store.policy_state import applied, workers


@app.command("workers")
def list_workers(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Each worker process, the policy fingerprint it runs and when it was last seen."""
    with open_client() as client:
        tick = timedelta(seconds=client.runtime.settings.tick_seconds)
        with client.runtime.reads() as session:
            found = workers(session, utcnow(), tick)
            policy = applied(session)
    applied_fingerprint = policy.fingerprint if policy else None
    if as_json:
        print_json(
            {
                "applied": applied_fingerprint,
                "workers": [
                    {**worker._asdict(), "last_seen": worker.last_seen.isoformat()}
                    for worker in found
                ],
            }
        )
        return
    table = Table("worker", "policy", "last seen", "", title="workers")
    for worker in found:
        notes = [
            note
            for note, on in (("stale", worker.stale), ("not applied", not worker.applied))
            if on
        ]
        # Worker names come from the hosts: shown as text, never read as markup.
        table.add_row(
            Text(worker.name),
            worker.fingerprint,
            worker.last_seen.isoformat(),
            ", ".join(notes),
        )
    out.print(table)
    out.print(
        f"policy applied to held messages: {applied_fingerprint or '(none yet)'}", highlight=False
    )
