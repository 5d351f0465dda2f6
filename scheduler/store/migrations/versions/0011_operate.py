"""finding and acting on messages: cancel, retry by hand, who asked, and list indexes

A cancelled message is finished, so the retention purge's partial index now names
``cancelled`` among the final states. A decision taken by hand keeps who or what asked
(``decisions.actor``). A retried message counts its retries from the attempt it was
retried at (``messages.retried_at_attempt``): its attempt numbers go on, since each
names the limiter's ticket for that send. Five indexes let a person find messages by
recipient, line, state, reason or age, newest first, without reading the table.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: The retention index's predicate before and after ``cancelled`` became final.
FINISHED_BEFORE = (
    "purged_at IS NULL AND state IN ('sent', 'dropped', 'expired', 'failed', 'needs_review')"
)
FINISHED_AFTER = (
    "purged_at IS NULL AND state IN "
    "('sent', 'dropped', 'expired', 'failed', 'needs_review', 'cancelled')"
)
#: Each listing index: its name and columns.
LISTING = (
    ("ix_messages_created", ["created_at", "id"]),
    ("ix_messages_recipient_created", ["recipient", "created_at"]),
    ("ix_messages_line_created", ["line_id", "created_at"]),
    ("ix_messages_state_created", ["state", "created_at"]),
    ("ix_messages_code_created", ["last_code", "created_at"]),
)


def _finished_index(where: str) -> None:
    op.drop_index("ix_messages_finished_unpurged", "messages")
    op.create_index(
        "ix_messages_finished_unpurged",
        "messages",
        ["updated_at"],
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "retried_at_attempt", sa.Integer(), nullable=False, server_default=sa.text("0")
            )
        )
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("actor", sa.String(200), nullable=True))
    _finished_index(FINISHED_AFTER)
    for name, columns in LISTING:
        op.create_index(name, "messages", columns)


def downgrade() -> None:
    for name, _ in LISTING:
        op.drop_index(name, "messages")
    _finished_index(FINISHED_BEFORE)
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("actor")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("retried_at_attempt")
