"""job ids are never reused: jobs.id AUTOINCREMENT on SQLite

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A job id reaches the platforms (the webhook's ``job_id`` and, through the job key, idempotency
keys and Discord nonces), so an id must never be handed out twice. SQLite's plain INTEGER PRIMARY
KEY gives a new row max(id) + 1: after ``forget`` deleted the newest job, the next job got its id
again. AUTOINCREMENT keeps the highest id ever used in ``sqlite_sequence`` and never goes below
it. SQLite can only add it by rebuilding the table. PostgreSQL needs nothing: a SERIAL column
draws from a sequence, and ``nextval`` never returns a value twice (not after a DELETE, not after
a rolled-back transaction); only an explicit ``setval`` or ``TRUNCATE … RESTART IDENTITY`` would
rewind it, and solarbot issues neither.

No other id reaches a platform: messages, conversations, feedback and channel settings ids stay
inside the database.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_jobs(autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_jobs(autoincrement=False)


def _rebuild_jobs(*, autoincrement: bool) -> None:
    """Rebuild ``jobs`` (batch mode copies every row, id included, and its indexes). Foreign
    keys are on and cannot be switched off inside the migration's transaction, so dropping the old
    table cascades into ``feedback`` (the only table that points at jobs): its rows are kept in a
    temporary table meanwhile and put back (ids included) once the new ``jobs`` has the name."""
    op.execute("CREATE TEMP TABLE _s_feedback_kept AS SELECT * FROM feedback")
    with op.batch_alter_table(
        "jobs", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass
    op.execute("DELETE FROM feedback")  # whatever the cascade left (nothing, unless it changes)
    op.execute("INSERT INTO feedback SELECT * FROM _s_feedback_kept")
    op.execute("DROP TABLE _s_feedback_kept")
