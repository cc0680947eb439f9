"""job trace: prompt tokens, generation time and model id of each reply

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prompt_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("generation_ms", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("model_id", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("model_id")
        batch_op.drop_column("generation_ms")
        batch_op.drop_column("prompt_tokens")
