"""The commands that only read start light: no Celery, web framework or provider client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: Top-level packages the reading commands must not load: Celery and its transport, the
#: web framework and its server, and the HTTP client the provider clients are built on.
HEAVY = ("celery", "kombu", "fastapi", "starlette", "uvicorn", "httpx", "linq", "tasks")
#: healthgate's own provider clients (the registry, ``scheduler.providers``, is a few
#: lines of the standard library: it builds a client only when a send asks for one).
PROVIDER_CLIENTS = ("scheduler.providers.linq", "scheduler.providers.dialog360")

#: Runs one command in a fresh interpreter, then prints the modules it loaded as JSON.
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.__stderr__.write("\\nMODULES " + json.dumps(sorted(sys.modules))))
sys.argv = ["healthgate", *sys.argv[1:]]
from scheduler.cli import main
main()
"""


def loaded(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """The exit code of ``healthgate *args`` and every module it imported."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HEALTHGATE_")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _, _, modules = done.stderr.rpartition("\nMODULES ")
    return done.returncode, set(json.loads(modules))


def heavy(modules: set[str]) -> list[str]:
    return sorted(
        name for name in modules if name.split(".")[0] in HEAVY or name.startswith(PROVIDER_CLIENTS)
    )


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    """A folder where ``healthgate init`` made the embedded database and the policy."""
    code, _ = loaded(tmp_path, "init")
    assert code == 0
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [("--help",), ("status",), ("status", "--json"), ("explain", "no-such-id")],
    ids=["help", "status", "status-json", "explain"],
)
def test_a_reading_command_loads_no_celery_web_or_provider_client(
    initialised: Path, args: tuple[str, ...]
) -> None:
    # Given a folder set up by init
    # When a command that only reads runs
    code, modules = loaded(initialised, *args)
    # Then it ran (explain of an unknown id is refused in one line, exit 2)
    assert code == (2 if args[0] == "explain" else 0)
    # And none of the heavy packages was imported
    assert heavy(modules) == []


def test_help_loads_neither_the_database_nor_the_policy_model(tmp_path: Path) -> None:
    code, modules = loaded(tmp_path, "--help")
    assert code == 0
    assert {"sqlalchemy", "pydantic", "redis", "policies.config"}.isdisjoint(modules)


def test_the_probe_sees_what_a_command_imports_when_it_runs(initialised: Path) -> None:
    # Given the same probe, a command that dispatches (drain) loads the send path, which
    # status does not: the checks above see imports made late, inside a command.
    code, modules = loaded(initialised, "drain")
    assert code == 0
    assert "scheduler.dispatch.sending" in modules
    assert "scheduler.dispatch.sending" not in loaded(initialised, "status")[1]
