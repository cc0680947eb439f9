"""human handoff: when a conversation was handed to a human (the bot stays quiet there)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases (never a batch rebuild of this table: see downgrade).
    op.add_column("conversations", sa.Column("handoff_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite >= 3.35 drops a column in place. Batch mode would rebuild the table, and dropping
        # the old one cascades (foreign keys are on) into every message and job.
        op.execute("ALTER TABLE conversations DROP COLUMN handoff_at")
    else:
        op.drop_column("conversations", "handoff_at")
