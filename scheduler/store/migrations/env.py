"""Alembic environment: runs against the engine healthgate hands over, or the settings' URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from scheduler.settings import Settings
from scheduler.store.db import engine_for
from scheduler.store.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    engine = engine_for(Settings())

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
