"""channel knowledge: the knowledge-base collections a channel answers from and its answering
mode (strict/assist), and the chunks given to the model for each job's reply (issue 14)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kb_collections", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("kb_mode", sa.String(length=16), nullable=True))
    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("chunk_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_chunks_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "position", name=op.f("pk_job_chunks")),
    )
    op.create_index(op.f("ix_job_chunks_chunk_id"), "job_chunks", ["chunk_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_chunks_chunk_id"), table_name="job_chunks")
    op.drop_table("job_chunks")
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.drop_column("kb_mode")
        batch_op.drop_column("kb_collections")
