"""The `healthgate` command line: one module a group of commands, all on one Typer app."""

from __future__ import annotations

import logging
import os
import sys

from scheduler.cli import (
    acting,
    finding,
    messages,
    policy,
    setup,
    signals,
    simulate,
    status,
    workers,
)
from scheduler.cli.base import app

__all__ = [
    "acting",
    "app",
    "finding",
    "main",
    "messages",
    "policy",
    "setup",
    "signals",
    "simulate",
    "status",
    "workers",
]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # healthgate's own processes (and the worker and beat ``run`` starts) make every file
    # the owner's only, including those others' code makes in the data directory: the
    # beat schedule and the folder broker's messages. Inside an application's process
    # healthgate leaves the umask alone (see ``scheduler.files``).
    os.umask(0o077)
    app()
