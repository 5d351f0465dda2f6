"""outcomes: the outbox of final states, told to the application's callback

A message that is sent, dropped, expired, failed, cancelled or handed to a person gets
a row here in the same transaction; the delivery task calls the application's callback
task (or its webhook) from these rows, so a crash in between loses nothing. The
callbacks that workers deliver to are listed, so a process configured without one
leaves the outcomes alone while another one listens.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UNDELIVERED = "delivered_at IS NULL AND abandoned_at IS NULL"
FAILING = "last_error IS NOT NULL AND delivered_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("abandoned_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
        # Ids are never given twice, even after the newest rows are purged.
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("outcomes", schema=None) as batch_op:
        batch_op.create_index("ix_outcomes_message_id", ["message_id"], unique=False)
        batch_op.create_index("ix_outcomes_at", ["at"], unique=False)
        batch_op.create_index(
            "ix_outcomes_undelivered",
            ["next_attempt_at", "id"],
            unique=False,
            postgresql_where=sa.text(UNDELIVERED),
            sqlite_where=sa.text(UNDELIVERED),
        )
        batch_op.create_index(
            "ix_outcomes_abandoned",
            ["abandoned_at"],
            unique=False,
            postgresql_where=sa.text("abandoned_at IS NOT NULL"),
            sqlite_where=sa.text("abandoned_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_outcomes_failing",
            ["id"],
            unique=False,
            postgresql_where=sa.text(FAILING),
            sqlite_where=sa.text(FAILING),
        )
    op.create_table(
        "outcome_listeners",
        sa.Column("callback", sa.String(length=300), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("callback"),
    )


def downgrade() -> None:
    op.drop_table("outcome_listeners")
    op.drop_table("outcomes")
