"""channel reply settings: the longest reply (characters) and the reply language per channel

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_reply_chars", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("language", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.drop_column("language")
        batch_op.drop_column("max_reply_chars")
