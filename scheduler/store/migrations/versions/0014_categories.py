"""categories: a message's category, priority and recipient time zone; the claim by priority

Every message gets a category (its window and priority come from the policy) and the
priority kept for the claim's order; messages stored before are transactional, as an
enqueue without a category is. The claim reads waiting messages highest priority first,
then oldest, from its own index; the queues of held messages are kept per priority, so
a transactional message never joins the end of a marketing backlog.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

WAITING = sa.text("state IN ('queued', 'throttled', 'deferred')")
THROTTLED = sa.text("state = 'throttled'")
#: The default category's, as an enqueue without a category gets.
TRANSACTIONAL_PRIORITY = "10"


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("category", sa.String(32), server_default="transactional", nullable=False)
        )
        batch.add_column(
            sa.Column(
                "priority", sa.Integer(), server_default=TRANSACTIONAL_PRIORITY, nullable=False
            )
        )
        batch.add_column(sa.Column("recipient_tz", sa.String(64), nullable=True))
    op.drop_index("ix_messages_waiting_due", table_name="messages")
    op.create_index(
        "ix_messages_waiting_priority_due",
        "messages",
        [sa.text("priority DESC"), "not_before", "id"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    for name, column in (
        ("ix_messages_throttled_line", "line_id"),
        ("ix_messages_throttled_chat", "chat_id"),
    ):
        op.drop_index(name, table_name="messages")
        op.create_index(
            name,
            "messages",
            [column, "last_code", "priority", "not_before"],
            postgresql_where=THROTTLED,
            sqlite_where=THROTTLED,
        )


def downgrade() -> None:
    for name, column in (
        ("ix_messages_throttled_line", "line_id"),
        ("ix_messages_throttled_chat", "chat_id"),
    ):
        op.drop_index(name, table_name="messages")
        op.create_index(
            name,
            "messages",
            [column, "last_code", "not_before"],
            postgresql_where=THROTTLED,
            sqlite_where=THROTTLED,
        )
    op.drop_index("ix_messages_waiting_priority_due", table_name="messages")
    op.create_index(
        "ix_messages_waiting_due",
        "messages",
        ["not_before", "id"],
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("recipient_tz")
        batch.drop_column("priority")
        batch.drop_column("category")
