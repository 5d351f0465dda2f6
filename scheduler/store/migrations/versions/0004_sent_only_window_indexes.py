"""the window indexes hold sent messages only

Every read of ``ix_messages_line_dispatched`` and ``ix_messages_line_body_dispatched``
asks for a window of ``dispatched_at``; a message waiting to be sent has none, and no
longer costs an entry in either on enqueue.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 04:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DISPATCHED = "dispatched_at IS NOT NULL"
INDEXES = {
    "ix_messages_line_dispatched": ["line_id", "dispatched_at"],
    "ix_messages_line_body_dispatched": ["line_id", "body_hash", "dispatched_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(
                name,
                columns,
                unique=False,
                postgresql_where=sa.text(DISPATCHED),
                sqlite_where=sa.text(DISPATCHED),
            )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        for name, columns in INDEXES.items():
            batch_op.drop_index(name)
            batch_op.create_index(name, columns, unique=False)
