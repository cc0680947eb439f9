"""knowledge base: collections, their documents and the documents' chunks, with a full-text index
(SQLite: an external-content FTS5 table kept in sync by triggers, BM25-ranked; PostgreSQL: a
generated tsvector column with a GIN index) (issue 14)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Porter stemming on both databases (PostgreSQL's 'english' configuration stems too), Unicode
# word splitting with diacritics folded.
SQLITE_FTS = """
CREATE VIRTUAL TABLE kb_chunks_fts USING fts5(
    context, text, content='kb_chunks', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
)
"""
SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER kb_chunks_fts_insert AFTER INSERT ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(rowid, context, text) VALUES (new.id, new.context, new.text);
    END
    """,
    """
    CREATE TRIGGER kb_chunks_fts_delete AFTER DELETE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, context, text)
        VALUES ('delete', old.id, old.context, old.text);
    END
    """,
    """
    CREATE TRIGGER kb_chunks_fts_update AFTER UPDATE ON kb_chunks BEGIN
        INSERT INTO kb_chunks_fts(kb_chunks_fts, rowid, context, text)
        VALUES ('delete', old.id, old.context, old.text);
        INSERT INTO kb_chunks_fts(rowid, context, text) VALUES (new.id, new.context, new.text);
    END
    """,
)
POSTGRES_SEARCH = """
ALTER TABLE kb_chunks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, context), 'A')
    || setweight(to_tsvector('english'::regconfig, text), 'D')
) STORED
"""


def upgrade() -> None:
    op.create_table(
        "kb_collections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_collections")),
        sa.UniqueConstraint("name", name=op.f("uq_kb_collections_name")),
    )
    op.create_table(
        "kb_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("link", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["kb_collections.id"],
            name=op.f("fk_kb_documents_collection_id_kb_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_documents")),
        sa.UniqueConstraint("collection_id", "source_uri", name="uq_kb_documents_source"),
    )
    op.create_index(
        "ix_kb_documents_collection_id_origin",
        "kb_documents",
        ["collection_id", "origin"],
        unique=False,
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("heading_path", sa.JSON(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["kb_documents.id"],
            name=op.f("fk_kb_chunks_document_id_kb_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
    )
    op.create_index(
        "ix_kb_chunks_document_id_position", "kb_chunks", ["document_id", "position"], unique=False
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_SEARCH)
        op.execute("CREATE INDEX ix_kb_chunks_search ON kb_chunks USING gin (search)")
    else:
        op.execute(SQLITE_FTS)
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_kb_chunks_search")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS kb_chunks_fts_{name}")
        op.execute("DROP TABLE IF EXISTS kb_chunks_fts")
    op.drop_index("ix_kb_chunks_document_id_position", table_name="kb_chunks")
    op.drop_table("kb_chunks")
    op.drop_index("ix_kb_documents_collection_id_origin", table_name="kb_documents")
    op.drop_table("kb_documents")
    op.drop_table("kb_collections")
