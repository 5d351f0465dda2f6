"""The import contracts in ``pyproject.toml`` hold, and would catch an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_an_upward_import_breaks_the_layer_contract(tmp_path: Path) -> None:
    # Given a copy of the packages and their contracts
    for package in ("scheduler", "policies", "tasks"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]

    def run() -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
        return subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True)

    kept = run()
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # When the store imports a stage above it
    models = tmp_path / "scheduler" / "store" / "models.py"
    models.write_text(models.read_text() + "\nfrom scheduler.signals import health  # noqa\n")
    broken = run()

    # Then the contract is broken, naming the import
    assert broken.returncode != 0
    assert "scheduler.store.models -> scheduler.signals" in broken.stdout
