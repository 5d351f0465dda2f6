"""How long ``healthgate --help`` takes to start, against Python itself in the same run."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The command line's entry point run the way the installed script runs it.
HELP = (sys.executable, "-c", "from scheduler.cli import main; main()", "--help")
#: Python starting and doing nothing: the floor no command can go under.
BARE = (sys.executable, "-c", "pass")


def seconds(command: Sequence[str], cwd: Path) -> float:
    """Wall-clock seconds of one run of ``command``, output discarded."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def bench_cli(cwd: Path, runs: int, command: Sequence[str] = HELP) -> dict[str, Any]:
    """Median seconds of ``command`` and of bare Python, the runs interleaved so both see
    the same machine, and the difference (the goal is at most 0.3 s)."""
    bare: list[float] = []
    helped: list[float] = []
    for _ in range(runs):
        bare.append(seconds(BARE, cwd))
        helped.append(seconds(command, cwd))
    python = statistics.median(bare)
    help_ = statistics.median(helped)
    return {
        "runs": runs,
        "python_seconds": round(python, 3),
        "help_seconds": round(help_, 3),
        "over_python_seconds": round(help_ - python, 3),
        "ratio": round(help_ / python, 2),
    }
