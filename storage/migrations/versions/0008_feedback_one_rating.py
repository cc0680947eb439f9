"""feedback: one rating per person and reply (the latest), not one per person, reply and rating

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

The unique key was (job_id, user_id, rating), so one person could hold a 👍 and a 👎 on the same
answer. Now (job_id, user_id): of a person's rows on a reply only the latest is kept (by
created_at, then id), and a new rating replaces theirs. Going down keeps the rows (they satisfy
the looser key).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DELETE FROM feedback WHERE EXISTS ("
        " SELECT 1 FROM feedback AS newer"
        " WHERE newer.job_id = feedback.job_id AND newer.user_id = feedback.user_id"
        " AND (newer.created_at > feedback.created_at"
        " OR (newer.created_at = feedback.created_at AND newer.id > feedback.id)))"
    )
    # feedback has no table pointing at it: SQLite's batch rebuild cascades into nothing.
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_constraint("uq_feedback_vote", type_="unique")
        batch_op.create_unique_constraint("uq_feedback_rater", ["job_id", "user_id"])


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_constraint("uq_feedback_rater", type_="unique")
        batch_op.create_unique_constraint("uq_feedback_vote", ["job_id", "user_id", "rating"])
