"""signals kept as facts: the opt-out ledger, and the latest report of each kind

Each source of a chat's or a line's state is kept as its own fact with its own time,
and what the gate reads (``chats.health``, ``chats.opted_out_at``, ``opt_outs``,
``lines.reputation``, ``lines.status``) is derived from them. Existing opt-outs and
health become the first facts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 22:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "consent_facts",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("recipient", sa.String(length=20), nullable=False),
        sa.Column("chat_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["chat_id"], ["chats.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_consent_facts_recipient", "consent_facts", ["recipient"])
    op.create_index("ix_consent_facts_chat", "consent_facts", ["chat_id"])
    with op.batch_alter_table("chats") as batch:
        batch.add_column(sa.Column("reported_health", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("critical_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("healthy_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("first_inbound_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("lines") as batch:
        batch.add_column(sa.Column("reported_reputation", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("critical_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("healthy_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("reported_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("active_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("blocked_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("probe_at", sa.DateTime(), nullable=True))
    # What was stored becomes the first facts: a chat's or line's last report, its
    # latch, and every opt-out known (on a chat, or over the account).
    op.execute(
        "UPDATE chats SET reported_health = health, "
        "critical_at = CASE WHEN health = 'CRITICAL' THEN health_updated_at END, "
        "healthy_at = CASE WHEN health = 'HEALTHY' THEN health_updated_at END "
        "WHERE health_updated_at IS NOT NULL"
    )
    op.execute(
        "UPDATE lines SET reported_reputation = reputation, "
        "critical_at = CASE WHEN reputation = 'CRITICAL' THEN reputation_updated_at END, "
        "healthy_at = CASE WHEN reputation = 'HEALTHY' THEN reputation_updated_at END "
        "WHERE reputation_updated_at IS NOT NULL"
    )
    op.execute(
        "UPDATE lines SET reported_status = status, "
        "active_at = CASE WHEN status = 'ACTIVE' THEN status_updated_at END "
        "WHERE status_updated_at IS NOT NULL"
    )
    op.execute(
        "INSERT INTO consent_facts (recipient, chat_id, kind, at, source, received_at) "
        "SELECT recipient, id, 'OPT_OUT', opted_out_at, 'before the ledger', opted_out_at "
        "FROM chats WHERE opted_out_at IS NOT NULL"
    )
    op.execute(
        "INSERT INTO consent_facts (recipient, chat_id, kind, at, source, received_at) "
        "SELECT recipient, NULL, 'OPT_OUT', opted_out_at, source, opted_out_at FROM opt_outs"
    )


def downgrade() -> None:
    with op.batch_alter_table("lines") as batch:
        for column in (
            "probe_at",
            "blocked_at",
            "active_at",
            "reported_status",
            "healthy_at",
            "critical_at",
            "reported_reputation",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("chats") as batch:
        for column in ("first_inbound_at", "healthy_at", "critical_at", "reported_health"):
            batch.drop_column(column)
    op.drop_index("ix_consent_facts_chat", "consent_facts")
    op.drop_index("ix_consent_facts_recipient", "consent_facts")
    op.drop_table("consent_facts")
