"""Reaching the real services tests use: skip locally when absent, fail in CI."""

from __future__ import annotations

import os

import pytest
import redis
import sqlalchemy


def _redis_url() -> str:
    """The test Redis database: 15 by default, and one of its own per pytest-xdist worker
    (``gw0`` keeps it, ``gw1`` takes the one below...), since tests empty it."""
    url = os.environ.get("HEALTHGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    base, _, number = url.rpartition("/")
    return f"{base}/{int(number or 0) - int(worker[2:])}"


REDIS_URL = _redis_url()
POSTGRES_URL = os.environ.get(
    "HEALTHGATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(service: str, url: str, error: Exception) -> None:
    """Skip with the reason on a developer's machine; fail in CI, which must run it."""
    message = f"{service} is not reachable at {url} ({type(error).__name__}: {error})"
    if in_ci():
        pytest.fail(f"{message}; CI must exercise these tests")
    pytest.skip(message)


def require_redis() -> str:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        unavailable("Redis", REDIS_URL, exc)
    return REDIS_URL


def require_postgres() -> str:
    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as exc:
        unavailable("PostgreSQL", POSTGRES_URL, exc.orig or exc)
    finally:
        engine.dispose()
    return POSTGRES_URL


#: Debian's chromium and its driver, which the status page's browser test drives.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_browser() -> tuple[str, str]:
    """Chromium and chromedriver: skip locally when absent (.ci/run installs them)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        unavailable("Chromium", " and ".join(missing), FileNotFoundError("not installed"))
    return CHROMIUM, CHROMEDRIVER
