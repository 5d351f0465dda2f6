"""Fixtures: a store on every backend, a policy file, a frozen clock, a client."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from scheduler.client import Healthgate
from scheduler.providers.log import read_send_log
from scheduler.settings import Settings
from scheduler.store.db import create_db_engine, upgrade
from tests.services import require_postgres, require_redis

#: Fixtures of the providers' fake HTTP side (linq, d360, provider_client).
pytest_plugins = ["tests.provider_fixtures"]

# Property tests: a modest count by default so the suite stays fast on a shared machine;
# HEALTHGATE_HYPOTHESIS_PROFILE=thorough searches far longer before a release.
hypothesis_settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HYPOTHESIS_PROFILE = os.environ.get("HEALTHGATE_HYPOTHESIS_PROFILE", "default")
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)


def examples(count: int) -> int:
    """A test's own example count, multiplied under the thorough profile."""
    return count * 25 if HYPOTHESIS_PROFILE == "thorough" else count


def budget(seconds: int) -> int:
    """A property test's time limit, as much longer as its examples are many."""
    return examples(seconds)


LINE_A = "+14155550100"
LINE_B = "+14155550101"
START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

POLICY = f"""
[[lines]]
number = "{LINE_A}"
provider = "log"

[[lines]]
number = "{LINE_B}"
provider = "log"
"""


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied per test: migrating each time is slow."""
    path = tmp_path_factory.mktemp("template") / "healthgate.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped afterwards."""
    admin_url = require_postgres()
    name = f"healthgate_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


TABLES = (
    "outcome_listeners, outcomes, decisions, messages, consent_facts, opt_outs, chats, "
    "lines, webhook_events, policy_state, workers"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on the embedded SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "healthgate.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_database")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    engine.dispose()
    yield url


@pytest.fixture
def policy_text() -> str:
    return POLICY


@pytest.fixture
def settings(tmp_path: Path, database_url: str, policy_text: str) -> Settings:
    policy = tmp_path / "healthgate.toml"
    policy.write_text(policy_text)
    return Settings(
        data_dir=tmp_path / "data",
        policy_file=policy,
        database_url=database_url,
        broker_url="memory://",
    )


@pytest.fixture
def broker() -> str:
    """A Redis database emptied for the test: a Celery broker's queues start empty."""
    url = require_redis()
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """Python's clock frozen at START; tests move it with ``clock.tick(...)``."""
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def hg(settings: Settings, clock: FrozenDateTimeFactory) -> Iterator[Healthgate]:
    client = Healthgate(settings)
    client.sync_lines()
    yield client
    client.close()


@pytest.fixture
def sends(settings: Settings) -> Callable[[], list[dict[str, str]]]:
    """What the log provider sent so far."""
    return lambda: read_send_log(settings.send_log_path)
