"""reply notice: what a reply opened with before its generated text (the lines about the
question's attached files, the notice that the question was shortened), kept with a reply that
was generated but not yet delivered, so that the attempt that delivers it posts the same text
(issue 15, attached files). A plain ``ALTER TABLE`` both ways, on SQLite too (no table rebuild:
the rows pointing at jobs are left alone).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("reply_notice", sa.Text(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that rebuilds ``jobs``, and dropping the old table would cascade
    # into every table pointing at jobs (feedback, job_chunks, handoff follow-ups). SQLite drops
    # a plain column in place since 3.35; PostgreSQL always has.
    op.execute("ALTER TABLE jobs DROP COLUMN reply_notice")
