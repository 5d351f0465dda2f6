"""Engines and schema migrations, built from settings (never a module global)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from scheduler import constants
from scheduler.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")


def create_db_engine(
    url: str, busy_timeout: float = constants.SQLITE_BUSY_TIMEOUT_SECONDS
) -> Engine:
    """An engine whose transactions serialize writers safely on SQLite too.

    On SQLite a writer waits ``busy_timeout`` seconds for the write lock, then fails.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout, "isolation_level": None})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the single writer; foreign keys are off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        # Take the write lock when the transaction starts, not at its first write:
        # a claim then reads exactly what it updates, like FOR UPDATE on PostgreSQL.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration."""
    command.upgrade(alembic_config(engine), "head")


def has_schema(engine: Engine) -> bool:
    return inspect(engine).has_table("alembic_version")


def engine_for(settings: Settings) -> Engine:
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return create_db_engine(settings.database, settings.sqlite_busy_timeout_seconds)
