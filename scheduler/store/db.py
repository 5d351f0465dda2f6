"""Engines and schema migrations, built from settings (never a module global)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from policies.errors import InvalidInput
from scheduler import constants, metrics
from scheduler.files import private_dir, private_file, tighten_if_present
from scheduler.settings import Settings, masked_url

MIGRATIONS = Path(__file__).with_name("migrations")


def create_db_engine(
    url: str, busy_timeout: float = constants.SQLITE_BUSY_TIMEOUT_SECONDS
) -> Engine:
    """An engine whose transactions serialize writers safely on SQLite too.

    On SQLite a writer waits ``busy_timeout`` seconds for the write lock, then fails.
    """
    if not url.startswith("sqlite"):
        engine = create_engine(url, pool_pre_ping=True, future=True)
        metrics.watch(engine)
        return engine
    engine = create_engine(url, connect_args={"timeout": busy_timeout, "isolation_level": None})
    metrics.watch(engine)

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
        # A reader (``read_sessions``) takes none: WAL lets it read beside the writer.
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


#: An execution option: the transaction only reads, so SQLite need not lock writers out.
READ_ONLY = "healthgate_read_only"


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite they never wait for, nor hold, the write lock
    (the JSON reads, ``status``, ``explain``), so a long write cannot turn them into
    errors, nor they make a STOP wait."""
    return sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


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
    """The engine of the settings' database; on SQLite its files are the owner's only."""
    url = settings.database
    try:
        if url.startswith("sqlite"):
            private_dir(settings.data_dir)
            _private_sqlite(url)
        return create_db_engine(url, settings.sqlite_busy_timeout_seconds)
    except (ArgumentError, ValueError):
        # Their messages quote the URL, password and all.
        raise InvalidInput(
            "HEALTHGATE_DATABASE_URL", masked_url(url), "is not a database URL"
        ) from None


def _private_sqlite(url: str) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives its ``-wal``
    and ``-shm`` files the database file's mode. Files an older version left open to
    others are tightened."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite names the missing folder when it opens it
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten_if_present(path.with_name(path.name + suffix))
