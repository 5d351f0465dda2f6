"""The schema's partial indexes, as the migrations leave them on every store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, text

from scheduler.store.db import alembic_config, create_db_engine, upgrade

WINDOW_INDEXES = ("ix_messages_line_dispatched", "ix_messages_line_body_dispatched")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def index_sql(engine: Engine, name: str) -> str:
    """How the store defines index ``name``."""
    if engine.dialect.name == "postgresql":
        query = text("SELECT indexdef FROM pg_indexes WHERE indexname = :name")
    else:
        query = text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name")
    with engine.connect() as connection:
        return str(connection.execute(query, {"name": name}).scalar_one())


@pytest.mark.parametrize("name", WINDOW_INDEXES)
def test_the_window_indexes_hold_sent_messages_only(engine: Engine, name: str) -> None:
    assert "dispatched_at IS NOT NULL" in index_sql(engine, name)


def test_the_window_indexes_go_back_to_whole_and_return_partial(engine: Engine) -> None:
    command.downgrade(alembic_config(engine), "0003")
    before = [index_sql(engine, name) for name in WINDOW_INDEXES]
    upgrade(engine)
    after = [index_sql(engine, name) for name in WINDOW_INDEXES]

    assert not any("WHERE" in sql for sql in before)
    assert all("dispatched_at IS NOT NULL" in sql for sql in after)


def test_messages_stored_before_categories_become_transactional(engine: Engine) -> None:
    # Given a message stored before migration 0014
    command.downgrade(alembic_config(engine), "0013")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO messages (id, pinned, recipient, body, state, attempts, "
                "created_at, updated_at) VALUES ('m1', false, '+14155550123', 'hi', "
                "'queued', 0, '2026-11-22 09:00:00', '2026-11-22 09:00:00')"
            )
        )

    # When the store is upgraded
    upgrade(engine)

    # Then it is transactional, at the default category's priority, with no zone given
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT category, priority, recipient_tz FROM messages WHERE id = 'm1'")
        ).one()
    assert tuple(row) == ("transactional", 10, None)
    assert "priority DESC" in index_sql(engine, "ix_messages_waiting_priority_due")
