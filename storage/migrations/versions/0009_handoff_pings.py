"""handoff pings: when the support group/role was last pinged, so that several ingress processes
share one cooldown per conversation and asker and one cap per workspace (issue 13, item 15)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "handoff_pings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("workspace", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=128), nullable=False),
        sa.Column("thread", sa.String(length=128), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("pinged_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoff_pings")),
    )
    op.create_index(
        "ix_handoff_pings_workspace",
        "handoff_pings",
        ["platform", "workspace", "pinged_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_handoff_pings_workspace", table_name="handoff_pings")
    op.drop_table("handoff_pings")
