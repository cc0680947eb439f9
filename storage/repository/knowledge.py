"""The knowledge base: collections, documents and their chunks, and full-text search over them.

SQLite searches the external-content FTS5 table ``kb_chunks_fts`` (migration 0010) ranked by
``bm25()``; PostgreSQL finds candidates through the GIN index of the generated ``search`` tsvector
and ranks them by the same BM25, from term statistics kept with the documents (migration 0016).
Both then weigh document evidence and put each document's best passage first: ``kb_ranking``.
With a query vector (hybrid retrieval, ``SOLARBOT_KB_EMBEDDINGS``) that ranking is fused with the
passages whose stored vectors (``kb_vectors``) are nearest.

User text never reaches either query language as syntax. For FTS5 every word becomes a quoted
string (FTS5's own operators ``AND OR NOT NEAR * : ^ ( )`` and quotes are then only text); for
PostgreSQL the same words, holding only letters and digits, are bound values of
``to_tsvector``, and joined by "|" for ``to_tsquery`` (none of them is tsquery syntax). On both the words are OR-ed, not AND-ed: users ask in sentences, and requiring every word
of a sentence to appear in one passage finds nothing; the ranking puts the passages with the most
(and rarest) of the words first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, text, update

from bot.errors import KnowledgeBaseError
from bot.knowledge import (
    ChunkDraft,
    CollectionInfo,
    DocumentInfo,
    DocumentOutcome,
    DocumentResult,
    Passage,
)
from bot.storable import text_problem
from storage.repository.base import RepositoryBase, serialise_on, upsert
from storage.repository.kb_ranking import (
    CANDIDATES,
    CONTEXT_WEIGHT,
    POSTGRES_BM25,
    POSTGRES_COUNT_SIZE,
    POSTGRES_COUNT_TERMS,
    POSTGRES_DROP_TERMS,
    POSTGRES_SIZES,
    POSTGRES_TERMS,
    Candidate,
    TermStatistics,
    essential_terms,
    fuse,
    idf,
    rerank,
)
from storage.repository.tables import kb_chunks, kb_collections, kb_documents, kb_vectors
from storage.schema import utcnow

# How much of a query is read: a question is a sentence or two; more is noise (and cost).
QUERY_MAX_CHARS = 2_000
QUERY_MAX_TERMS = 32
# bm25() weights of the FTS5 columns (context = title and headings, text), and the matching
# ts_rank weights {D, C, B, A} on PostgreSQL (text at D, context at A).
SQLITE_WEIGHTS = (2.0, 1.0)
POSTGRES_WEIGHTS = "{0.4, 0.0, 0.0, 1.0}"
# ts_rank normalisation 1: divide by 1 + log(document length), as BM25 does in spirit.
POSTGRES_NORMALISATION = 1
COLLECTION_NAME_CHARS = 128

# Words too common to help a keyword search: English stop words, and the words people wrap their
# questions in ("how can I make ...", "is there a way to use ..."), and what is left of
# contractions split at the apostrophe ("what's", "don't"). PostgreSQL's 'english'
# configuration drops its own list; FTS5 has none, and an OR of "how", "do", "i" would match
# nearly every chunk.
_STOP_WORDS_TEXT = """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves
also able anyone get help just know like make need please possible someone something tell thing
things use used using want way
s t d ll m re ve don doesn isn aren didn won wouldn shouldn couldn"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
# Letters and digits: "_" separates words for FTS5 (unicode61) and PostgreSQL's parser alike.
_WORD = re.compile(r"[^\W_]+")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class QueryVector:
    """A query's embedding (normalised) and the model that made it."""

    model: str
    vector: Sequence[float]


@dataclass(frozen=True)
class DocumentVectors:
    """A document's chunk embeddings, one per chunk in order, and the model that made them."""

    model: str
    vectors: Sequence[Sequence[float]]


def clean_query(query: str) -> str:
    """The query as both databases can take it: at most ``QUERY_MAX_CHARS`` characters, NUL and
    lone surrogates (which neither database can encode) turned into spaces."""
    return _UNSTORABLE.sub(" ", query[:QUERY_MAX_CHARS])


def query_terms(query: str) -> list[str]:
    """The distinct words of ``query``, lower-cased, in order, stop words left out unless nothing
    else is left, at most ``QUERY_MAX_TERMS``."""
    words = list(dict.fromkeys(word.lower() for word in _WORD.findall(clean_query(query))))
    kept = [word for word in words if word not in STOP_WORDS] or words
    return kept[:QUERY_MAX_TERMS]


def fts5_query(query: str) -> str | None:
    """An FTS5 MATCH expression for ``query``: each word a quoted string (so no character of it
    is FTS5 syntax), OR-ed. None when the query has no words."""
    terms = query_terms(query)
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _context(title: str, heading_path: Sequence[str]) -> str:
    return " › ".join([title, *heading_path])


def _check_storable(field: str, value: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise KnowledgeBaseError(f"{field}: {problem}")


# FTS5 ranks the matches alone first (bm25 needs only the index), and only the best
# ``CANDIDATES`` are joined to their documents and collections: the join per match cost more than
# the ranking. The ranking does not depend on the collections, so when that window holds
# ``CANDIDATES`` passages of the given collections they are exactly the best; otherwise the search
# runs unwindowed.
SQLITE_RANKED = f"""
SELECT rowid AS id, -bm25(kb_chunks_fts, {CONTEXT_WEIGHT}, 1.0) AS score
FROM kb_chunks_fts WHERE kb_chunks_fts MATCH :match ORDER BY score DESC
"""
SQLITE_CANDIDATES = """
WITH ranked AS ({ranked})
SELECT ranked.id, c.document_id, ranked.score
FROM ranked
JOIN kb_chunks AS c ON c.id = ranked.id
JOIN kb_documents AS d ON d.id = c.document_id
JOIN kb_collections AS col ON col.id = d.collection_id
WHERE col.name IN ({names})
ORDER BY ranked.score DESC, ranked.id
LIMIT :candidates
"""
PASSAGES = """
SELECT c.id, c.document_id, col.name, d.title, d.link, c.heading_path, c.text, c.token_count
FROM kb_chunks AS c
JOIN kb_documents AS d ON d.id = c.document_id
JOIN kb_collections AS col ON col.id = d.collection_id
WHERE c.id IN ({ids})
"""


class KnowledgeStore(RepositoryBase):
    def search_passages(
        self,
        *,
        collections: Sequence[str],
        query: str,
        limit: int = 5,
        query_vector: QueryVector | None = None,
    ) -> list[Passage]:
        """The ``limit`` best passages for ``query`` in ``collections``, best first (BM25 with
        document evidence, the best passage of each document first: ``kb_ranking``). Any text is
        a valid query: one without words (or in no existing collection) finds nothing.
        ``query_vector``: the query's embedding: the keyword ranking is fused with the passages
        nearest to it (of the same model) by reciprocal rank fusion (hybrid retrieval)."""
        names = list(dict.fromkeys(collections))
        if not names or limit < 1:
            return []
        with self._transaction() as connection:
            if self.dialect == "postgresql":
                candidates = _postgres_candidates(connection, names, query_terms(query))
            else:
                candidates = _sqlite_candidates(connection, names, fts5_query(query))
            if query_vector is None:
                chosen = rerank(candidates, limit=limit)
            else:
                keyword = rerank(candidates, limit=CANDIDATES)
                nearest = _nearest(connection, names, query_vector)
                chosen = fuse([keyword, nearest])[:limit]
            if not chosen:
                return []
            ids = {f"id{i}": candidate.chunk_id for i, candidate in enumerate(chosen)}
            statement = text(PASSAGES.format(ids=", ".join(f":{key}" for key in ids)))
            rows = {row[0]: row for row in connection.execute(statement, ids)}
        return [_passage(rows[c.chunk_id], c.score) for c in chosen if c.chunk_id in rows]

    def collections(self) -> list[CollectionInfo]:
        """Every collection with its number of documents and chunks, by name."""
        chunk_counts = (
            select(kb_chunks.c.document_id, func.count().label("chunks"))
            .group_by(kb_chunks.c.document_id)
            .subquery()
        )
        statement = (
            select(
                kb_collections.c.name,
                func.count(kb_documents.c.id),
                func.coalesce(func.sum(chunk_counts.c.chunks), 0),
                func.max(kb_documents.c.updated_at),
            )
            .select_from(kb_collections)
            .outerjoin(kb_documents, kb_documents.c.collection_id == kb_collections.c.id)
            .outerjoin(chunk_counts, chunk_counts.c.document_id == kb_documents.c.id)
            .group_by(kb_collections.c.id, kb_collections.c.name)
            .order_by(kb_collections.c.name)
        )
        with self._transaction() as connection:
            rows = connection.execute(statement).all()
        return [
            CollectionInfo(
                name=name,
                documents=int(documents),
                chunks=int(chunks),
                updated_at=newest,
            )
            for name, documents, chunks, newest in rows
        ]

    def documents(self, *, collection: str | None = None) -> list[DocumentInfo]:
        """The stored documents (of ``collection``, or of all), by collection and source."""
        chunk_counts = (
            select(kb_chunks.c.document_id, func.count().label("chunks"))
            .group_by(kb_chunks.c.document_id)
            .subquery()
        )
        statement = (
            select(
                kb_documents.c.id,
                kb_collections.c.name,
                kb_documents.c.source_uri,
                kb_documents.c.title,
                kb_documents.c.link,
                kb_documents.c.checksum,
                func.coalesce(chunk_counts.c.chunks, 0),
                kb_documents.c.updated_at,
                kb_documents.c.origin,
            )
            .join(kb_collections, kb_collections.c.id == kb_documents.c.collection_id)
            .outerjoin(chunk_counts, chunk_counts.c.document_id == kb_documents.c.id)
            .order_by(kb_collections.c.name, kb_documents.c.source_uri)
        )
        if collection is not None:
            statement = statement.where(kb_collections.c.name == collection)
        with self._transaction() as connection:
            rows = connection.execute(statement).all()
        return [
            DocumentInfo(
                document_id=row[0],
                collection=row[1],
                source_uri=row[2],
                title=row[3],
                link=row[4],
                checksum=row[5],
                chunks=int(row[6]),
                updated_at=row[7],
                origin=row[8],
            )
            for row in rows
        ]

    def chunk_texts(self, *, document_id: int) -> list[ChunkDraft]:
        """A document's chunks in order, as stored."""
        statement = (
            select(
                kb_chunks.c.position,
                kb_chunks.c.heading_path,
                kb_chunks.c.text,
                kb_chunks.c.token_count,
            )
            .where(kb_chunks.c.document_id == document_id)
            .order_by(kb_chunks.c.position)
        )
        with self._transaction() as connection:
            rows = connection.execute(statement).all()
        return [
            ChunkDraft(
                position=row[0],
                heading_path=tuple(_heading_path(row[1])),
                text=row[2],
                token_count=row[3],
            )
            for row in rows
        ]

    def add_document(
        self,
        *,
        collection: str,
        source_uri: str,
        title: str,
        link: str,
        checksum: str,
        chunks: Sequence[ChunkDraft],
        origin: str | None = None,
        vectors: DocumentVectors | None = None,
    ) -> DocumentResult:
        """Store a document and its chunks in one transaction, creating the collection when new.
        A document with this ``source_uri`` in the collection is replaced, unless its checksum,
        title and link are the same (then nothing is written: ``UNCHANGED``). ``origin``: what
        ``kb add`` was given that led to this source (a folder, a sitemap; default the source
        itself), which ``kb sync`` reads again. ``vectors``: the chunks' embeddings, one per
        chunk in order (hybrid retrieval); they go with their chunks."""
        origin = source_uri if origin is None else origin
        if not collection or len(collection) > COLLECTION_NAME_CHARS:
            raise KnowledgeBaseError(
                f"collection name: 1 to {COLLECTION_NAME_CHARS} characters, not {len(collection)}"
            )
        for field, value in (
            ("collection name", collection),
            ("source", source_uri),
            ("origin", origin),
            ("title", title),
            ("link", link),
            ("checksum", checksum),
        ):
            _check_storable(field, value)
        for chunk in chunks:
            _check_storable(f"chunk {chunk.position}", chunk.text)
            for heading in chunk.heading_path:
                _check_storable(f"chunk {chunk.position} heading", heading)
        now = utcnow()
        with self._transaction() as connection:
            # Two writers of one source (two `kb add` runs, a reaction delivered twice) take
            # turns: the second sees the first's row instead of violating the unique key.
            serialise_on(connection, "kb-document", collection, source_uri)
            collection_id = _collection_id(connection, collection)
            existing = connection.execute(
                select(
                    kb_documents.c.id,
                    kb_documents.c.checksum,
                    kb_documents.c.title,
                    kb_documents.c.link,
                    kb_documents.c.origin,
                ).where(
                    kb_documents.c.collection_id == collection_id,
                    kb_documents.c.source_uri == source_uri,
                )
            ).first()
            if existing is not None:
                document_id = int(existing[0])
                if tuple(existing[1:]) == (checksum, title, link, origin):
                    count = connection.execute(
                        select(func.count()).where(kb_chunks.c.document_id == document_id)
                    ).scalar_one()
                    return DocumentResult(
                        document_id=document_id,
                        outcome=DocumentOutcome.UNCHANGED,
                        chunks=int(count),
                    )
                _count_postgres_statistics(
                    connection, collection_id=collection_id, document_id=document_id, sign=-1
                )
                connection.execute(delete(kb_chunks).where(kb_chunks.c.document_id == document_id))
                connection.execute(
                    update(kb_documents)
                    .where(kb_documents.c.id == document_id)
                    .values(
                        title=title, link=link, checksum=checksum, origin=origin, updated_at=now
                    )
                )
                outcome = DocumentOutcome.REPLACED
            else:
                document_id = connection.execute(
                    insert(kb_documents)
                    .values(
                        collection_id=collection_id,
                        source_uri=source_uri,
                        origin=origin,
                        title=title,
                        link=link,
                        checksum=checksum,
                        updated_at=now,
                    )
                    .returning(kb_documents.c.id)
                ).scalar_one()
                outcome = DocumentOutcome.ADDED
            if chunks:
                connection.execute(
                    insert(kb_chunks),
                    [
                        {
                            "document_id": document_id,
                            "position": chunk.position,
                            "heading_path": list(chunk.heading_path),
                            "context": _context(title, chunk.heading_path),
                            "text": chunk.text,
                            "token_count": chunk.token_count,
                        }
                        for chunk in chunks
                    ],
                )
            _count_postgres_statistics(
                connection, collection_id=collection_id, document_id=document_id, sign=1
            )
            if vectors is not None and chunks:
                _store_vectors(connection, document_id, vectors, len(chunks))
        return DocumentResult(document_id=document_id, outcome=outcome, chunks=len(chunks))

    def remove_document(self, *, collection: str, source_uri: str) -> bool:
        """Delete a document and its chunks; False when there was none."""
        with self._transaction() as connection:
            found = connection.execute(
                select(kb_documents.c.id, kb_documents.c.collection_id)
                .join(kb_collections, kb_collections.c.id == kb_documents.c.collection_id)
                .where(kb_collections.c.name == collection, kb_documents.c.source_uri == source_uri)
            ).first()
            if found is None:
                return False
            document_id, collection_id = int(found[0]), int(found[1])
            _count_postgres_statistics(
                connection, collection_id=collection_id, document_id=document_id, sign=-1
            )
            connection.execute(delete(kb_documents).where(kb_documents.c.id == document_id))
        return True

    def remove_collection(self, *, collection: str) -> int | None:
        """Delete a collection with its documents; the number of documents it had, None when
        there was no such collection."""
        with self._transaction() as connection:
            collection_id = connection.execute(
                select(kb_collections.c.id).where(kb_collections.c.name == collection)
            ).scalar_one_or_none()
            if collection_id is None:
                return None
            count = connection.execute(
                select(func.count()).where(kb_documents.c.collection_id == collection_id)
            ).scalar_one()
            # Chunks first, then documents: the FTS5 triggers fire per deleted chunk row, and
            # SQLite cascades only with foreign_keys on (which our engines set).
            connection.execute(
                delete(kb_chunks).where(
                    kb_chunks.c.document_id.in_(
                        select(kb_documents.c.id).where(
                            kb_documents.c.collection_id == collection_id
                        )
                    )
                )
            )
            connection.execute(
                delete(kb_documents).where(kb_documents.c.collection_id == collection_id)
            )
            connection.execute(delete(kb_collections).where(kb_collections.c.id == collection_id))
        return int(count)


def _collection_id(connection: Connection, name: str) -> int:
    connection.execute(
        upsert(connection, kb_collections)
        .values(name=name, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return int(
        connection.execute(
            select(kb_collections.c.id).where(kb_collections.c.name == name)
        ).scalar_one()
    )


def _sqlite_candidates(
    connection: Connection, names: list[str], match: str | None
) -> list[Candidate]:
    if match is None:
        return []
    placeholders = ", ".join(f":name{i}" for i in range(len(names)))
    params: dict[str, Any] = {"match": match, "candidates": CANDIDATES}
    params.update({f"name{i}": name for i, name in enumerate(names)})
    windowed = SQLITE_RANKED + f" LIMIT {CANDIDATES}"
    for ranked in (windowed, SQLITE_RANKED):
        statement = text(SQLITE_CANDIDATES.format(ranked=ranked, names=placeholders))
        rows = connection.execute(statement, params).all()
        if len(rows) >= CANDIDATES:
            break
    return [Candidate(int(row[0]), int(row[1]), float(row[2])) for row in rows]


def _postgres_candidates(
    connection: Connection, names: list[str], words: list[str]
) -> list[Candidate]:
    """BM25 of the best candidates (``kb_ranking``). ``words`` hold only letters and digits."""
    if not words:
        return []
    sizes = connection.execute(text(POSTGRES_SIZES), {"names": names}).all()
    collection_ids = [int(row[0]) for row in sizes]
    passages = sum(int(row[1]) for row in sizes)
    tokens = sum(int(row[2]) for row in sizes)
    if passages == 0:
        return []
    statistics: dict[str, TermStatistics] = {}
    rows = connection.execute(
        text(POSTGRES_TERMS), {"words": words, "collection_ids": collection_ids}
    ).all()
    for word, lexeme, holding in sorted(rows, key=lambda row: words.index(row[0])):
        statistics.setdefault(lexeme, TermStatistics(word, lexeme, int(holding)))
    matching = essential_terms(list(statistics.values()))
    if not matching:
        return []
    lexemes = list(statistics)
    params = {
        "lexemes": lexemes,
        "idfs": [idf(passages=passages, holding=statistics[x].passages) for x in lexemes],
        "matching": " | ".join(matching),
        "collection_ids": collection_ids,
        "average_length": max(tokens / passages, 1.0),
        "candidates": CANDIDATES,
    }
    return [
        Candidate(int(row[0]), int(row[1]), float(row[2]))
        for row in connection.execute(text(POSTGRES_BM25), params)
    ]


def _nearest(connection: Connection, names: list[str], query: QueryVector) -> list[Candidate]:
    """The ``CANDIDATES`` passages of ``names`` whose vectors (of ``query.model``) are nearest to
    ``query.vector`` (cosine: the vectors are normalised), nearest first. Every vector of the
    collections is read and compared: the cost grows with the collections."""
    rows = connection.execute(
        select(kb_vectors.c.chunk_id, kb_chunks.c.document_id, kb_vectors.c.vector)
        .join(kb_chunks, kb_chunks.c.id == kb_vectors.c.chunk_id)
        .join(kb_documents, kb_documents.c.id == kb_chunks.c.document_id)
        .join(kb_collections, kb_collections.c.id == kb_documents.c.collection_id)
        .where(kb_collections.c.name.in_(names), kb_vectors.c.model == query.model)
    ).all()
    width = len(query.vector)
    rows = [row for row in rows if len(row[2]) == 4 * width]
    if not rows:
        return []
    matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype=np.float32)
    similarity = matrix.reshape(len(rows), width) @ np.asarray(query.vector, dtype=np.float32)
    order = np.argsort(-similarity, kind="stable")[:CANDIDATES]
    return [
        Candidate(int(rows[i][0]), int(rows[i][1]), float(similarity[i])) for i in order.tolist()
    ]


def _store_vectors(
    connection: Connection, document_id: int, vectors: DocumentVectors, count: int
) -> None:
    if len(vectors.vectors) != count:
        raise KnowledgeBaseError(f"{len(vectors.vectors)} vectors for {count} chunks")
    ids = connection.execute(
        select(kb_chunks.c.id)
        .where(kb_chunks.c.document_id == document_id)
        .order_by(kb_chunks.c.position, kb_chunks.c.id)
    ).scalars()
    connection.execute(
        insert(kb_vectors),
        [
            {
                "chunk_id": chunk_id,
                "model": vectors.model,
                "vector": np.asarray(vector, dtype=np.float32).tobytes(),
            }
            for chunk_id, vector in zip(ids, vectors.vectors, strict=True)
        ],
    )


def _count_postgres_statistics(
    connection: Connection, *, collection_id: int, document_id: int, sign: int
) -> None:
    """Count a document's chunks into (``sign`` 1, after writing them) or out of (-1, before
    deleting them) its collection's ranking statistics (PostgreSQL: ``kb_ranking``)."""
    if connection.dialect.name != "postgresql":
        return
    # Writers of one collection take turns from here: a replacement counts out and then in, each
    # in lexeme order, and two such writers could otherwise each hold a row the other needs.
    serialise_on(connection, "kb-statistics", str(collection_id))
    params = {"collection_id": collection_id, "document_id": document_id, "sign": sign}
    counted = connection.execute(text(POSTGRES_COUNT_TERMS), params).all()
    emptied = [lexeme for lexeme, chunks in counted if chunks <= 0]
    if emptied:
        connection.execute(
            text(POSTGRES_DROP_TERMS), {"collection_id": collection_id, "lexemes": emptied}
        )
    connection.execute(text(POSTGRES_COUNT_SIZE), params)


def _passage(row: Any, score: float) -> Passage:
    return Passage(
        chunk_id=row[0],
        document_id=row[1],
        collection=row[2],
        title=row[3],
        link=row[4],
        heading_path=tuple(_heading_path(row[5])),
        text=row[6],
        token_count=row[7],
        score=score,
    )


def _heading_path(value: Any) -> list[str]:
    if isinstance(value, str):  # a JSON column read through text() comes back as text
        value = json.loads(value)
    return [str(part) for part in value or ()]
