"""usage: indexes for the daily per-user token quota and `solarbot usage` (issue 15, usage quotas):
a user's messages by time, the reply to a message, jobs by time

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_author_id_created_at", "messages", ["author_id", "created_at"], unique=False
    )
    op.create_index("ix_messages_reply_to_id", "messages", ["reply_to_id"], unique=False)
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_messages_reply_to_id", table_name="messages")
    op.drop_index("ix_messages_author_id_created_at", table_name="messages")
