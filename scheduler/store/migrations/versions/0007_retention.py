"""retention: finished messages' and webhook events' bodies are purged after a while

``messages.purged_at`` and ``webhook_events.purged_at`` mark a row whose body retention
emptied; the row, its times and a message's decisions stay. Two partial indexes hold
the rows still to purge, oldest first, so each bounded purge batch reads only those.
Adding nullable columns and indexes rewrites no table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 01:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The final states as of this revision (``scheduler.store.models.FINAL_STATES``).
FINISHED_UNPURGED = (
    "purged_at IS NULL AND state IN ('sent', 'dropped', 'expired', 'failed', 'needs_review')"
)
UNPURGED = "purged_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("webhook_events") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_messages_finished_unpurged",
        "messages",
        ["updated_at"],
        postgresql_where=sa.text(FINISHED_UNPURGED),
        sqlite_where=sa.text(FINISHED_UNPURGED),
    )
    op.create_index(
        "ix_webhook_events_unpurged",
        "webhook_events",
        ["received_at"],
        postgresql_where=sa.text(UNPURGED),
        sqlite_where=sa.text(UNPURGED),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_unpurged", "webhook_events")
    op.drop_index("ix_messages_finished_unpurged", "messages")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("purged_at")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("purged_at")
