"""indexes for /metrics: open messages by state and line, and chats not HEALTHY by line

The scrape counts the queue by state and line and the chats that are not HEALTHY; with
these partial indexes it reads only those rows' index entries, never the finished
messages or the healthy chats that make up nearly all of each table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OPEN = "state IN ('queued', 'throttled', 'deferred', 'claimed', 'sending', 'needs_review')"
UNHEALTHY = "health <> 'HEALTHY' OR opted_out_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_open_state_line",
            ["state", "line_id"],
            unique=False,
            postgresql_where=sa.text(OPEN),
            sqlite_where=sa.text(OPEN),
        )
    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chats_unhealthy_line",
            ["line_id", "health", "opted_out_at"],
            unique=False,
            postgresql_where=sa.text(UNHEALTHY),
            sqlite_where=sa.text(UNHEALTHY),
        )


def downgrade() -> None:
    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.drop_index("ix_chats_unhealthy_line")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_open_state_line")
