"""an index of each chat's sent messages by dispatch time, for the per-recipient daily cap

The gate counts the sends to each recipient of a batch over the last day; without this
index a chat's count reads every message the chat ever had.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DISPATCHED = "dispatched_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_chat_dispatched",
            ["chat_id", "dispatched_at"],
            unique=False,
            postgresql_where=sa.text(DISPATCHED),
            sqlite_where=sa.text(DISPATCHED),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_chat_dispatched")
