"""signals, pacing and content variation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 14:16:22.661020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_events_received_at", ["received_at"], unique=False)

    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recovered_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recovered_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_hash", sa.String(length=32), nullable=True))
        batch_op.create_index(
            "ix_messages_line_body_dispatched",
            ["line_id", "body_hash", "dispatched_at"],
            unique=False,
        )


def downgrade() -> None:

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_line_body_dispatched")
        batch_op.drop_column("body_hash")

    with op.batch_alter_table("lines", schema=None) as batch_op:
        batch_op.drop_column("recovered_at")

    with op.batch_alter_table("chats", schema=None) as batch_op:
        batch_op.drop_column("recovered_at")

    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_received_at")

    op.drop_table("webhook_events")
