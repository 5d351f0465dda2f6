"""held messages cost nothing while they wait: queues of holds, repeated decisions counted

Two partial indexes give the end of each queue of throttled messages (a line's, and a
chat's, by rule), so a new hold joins the end of its queue instead of every held
message being looked at again when the first may go. A decision taken again, the same
as the one before it, is counted on that record (``repeats``, ``last_at``) instead of
being stored again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_THROTTLED = sa.text("state = 'throttled'")


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("repeats", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("last_at", sa.DateTime(), nullable=True))
    for name, column in (
        ("ix_messages_throttled_line", "line_id"),
        ("ix_messages_throttled_chat", "chat_id"),
    ):
        op.create_index(
            name,
            "messages",
            [column, "last_code", "not_before"],
            postgresql_where=_THROTTLED,
            sqlite_where=_THROTTLED,
        )


def downgrade() -> None:
    op.drop_index("ix_messages_throttled_chat", table_name="messages")
    op.drop_index("ix_messages_throttled_line", table_name="messages")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("last_at")
        batch.drop_column("repeats")
