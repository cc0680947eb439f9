"""knowledge-base ranking: chunk vectors for optional hybrid retrieval (kb_vectors, both
databases), and BM25 statistics on PostgreSQL: the number of passages holding each
lexeme (kb_terms) and the number and total token count of the passages (kb_collection_sizes) per
collection, counted from the chunks already stored (issue 14). SQLite's FTS5 keeps the same
statistics inside its index.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

COUNT_TERMS = """
INSERT INTO kb_terms (collection_id, lexeme, chunks)
SELECT d.collection_id, u.lexeme, count(*)
FROM kb_chunks AS c
JOIN kb_documents AS d ON d.id = c.document_id
CROSS JOIN LATERAL unnest(tsvector_to_array(c.search)) AS u(lexeme)
GROUP BY d.collection_id, u.lexeme
"""
COUNT_SIZES = """
INSERT INTO kb_collection_sizes (collection_id, chunks, tokens)
SELECT d.collection_id, count(*), sum(c.token_count)
FROM kb_chunks AS c JOIN kb_documents AS d ON d.id = c.document_id
GROUP BY d.collection_id
"""


def upgrade() -> None:
    op.create_table(
        "kb_vectors",
        sa.Column("chunk_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chunk_id"],
            ["kb_chunks.id"],
            name=op.f("fk_kb_vectors_chunk_id_kb_chunks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("chunk_id", name=op.f("pk_kb_vectors")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "kb_terms",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("lexeme", sa.Text(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["kb_collections.id"],
            name=op.f("fk_kb_terms_collection_id_kb_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", "lexeme", name=op.f("pk_kb_terms")),
    )
    op.create_table(
        "kb_collection_sizes",
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["kb_collections.id"],
            name=op.f("fk_kb_collection_sizes_collection_id_kb_collections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("collection_id", name=op.f("pk_kb_collection_sizes")),
    )
    op.execute(COUNT_TERMS)
    op.execute(COUNT_SIZES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_table("kb_collection_sizes")
        op.drop_table("kb_terms")
    op.drop_table("kb_vectors")
