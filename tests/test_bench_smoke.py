"""The benchmark's smoke size still runs end to end (CI keeps it working; no speed asserted)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from bench.history import RATIOS, read
from bench.run import main
from tests.services import require_postgres, require_redis

pytestmark = [pytest.mark.bench, pytest.mark.timeout(120)]


def test_smoke_run_writes_every_measure_to_markdown_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Redis and PostgreSQL, and a database name of the benchmark's own
    admin_url = require_postgres()
    name = f"healthgate_bench_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BENCH_POSTGRES_URL", admin_url)
    monkeypatch.setenv("BENCH_REDIS_URL", require_redis())
    monkeypatch.setenv("BENCH_DATABASE", name)

    # When the smoke size runs
    try:
        main(["--size", "smoke", "--out", str(tmp_path)])
    finally:
        admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    # Then both files hold every measure, and every gated message was decided
    results = json.loads((tmp_path / "smoke.json").read_text())
    measures = {"cli", "gate", "enqueue", "end_to_end", "scale", "recovery", "simulate"}
    assert measures | {"machine"} <= set(results)
    assert results["simulate"]["messages"] > 0
    states = results["end_to_end"]["gated"]["states_after"]
    assert sum(states.values()) == results["sizes"]["end_to_end"]
    assert not {"queued", "claimed", "sending"} & set(states)
    assert results["recovery"]["states_after"] == {"sent": results["sizes"]["recovery"]}
    table = (tmp_path / "smoke.md").read_text()
    assert "/ bare Celery task per message, this run" in table
    assert "/ COPY of the same rows" in table
    assert "waiting" in table
    # And the run's ratios were appended to the history, and plotted
    measures = {row["measure"] for row in read(tmp_path / "history.csv")}
    assert set(RATIOS) | {"load_average"} <= measures
    assert (tmp_path / "history-smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
