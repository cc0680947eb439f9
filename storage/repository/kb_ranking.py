"""How the knowledge base ranks passages, the same way on both databases (migration 0016).

1. Okapi BM25 (k1 1.2, b 0.75) over each passage, its title and heading line counted
   ``CONTEXT_WEIGHT`` times per occurrence. SQLite: FTS5's own ``bm25()``, which is exactly that,
   with its statistics kept inside the index. PostgreSQL has no BM25 (``ts_rank`` has no inverse
   document frequency, and ranked the Python docs bench 0.71 recall@5 against 0.82 for FTS5), so it
   is computed here: the number of passages holding each lexeme (``kb_terms``) and the number and
   total length of the passages (``kb_collection_sizes``) are kept per collection, updated in the
   transaction that writes or removes a document; a passage's weighted term frequencies are read
   from its ``search`` tsvector.
2. Only the ``CANDIDATES`` best passages are read on. The GIN index finds PostgreSQL's candidates
   by the rarest query words whose passages together stay within ``POSTINGS_BUDGET`` (the others,
   common words, still count in the score of every candidate): scoring a passage costs about as
   much as reading it, and an OR of every word of a question matches a third of a corpus.
3. Document evidence: a passage gains ``DOCUMENT_EVIDENCE`` times the scores of the (at most
   ``EVIDENCE_PASSAGES``) best other candidates of its document, since a page that matches in
   several places is more likely about the question than one passing mention.
4. Diversity: the best passage of each document comes first, then the others, best first; a
   question's first hits are then several sources rather than one page's neighbouring passages.

On the Python documentation bench (bench/kb.py, bench/RESULTS.md), 1 brought PostgreSQL from
recall@5 0.71 to 0.85, and 3 and 4 together both databases to about 0.89; 3 without 4 lowered
recall (one strong page then fills the first five hits), 4 alone raised it by 0.02-0.03.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BM25_K1 = 1.2
BM25_B = 0.75
CONTEXT_WEIGHT = 2.0
CANDIDATES = 200
POSTINGS_BUDGET = 700
DOCUMENT_EVIDENCE = 0.2
EVIDENCE_PASSAGES = 3
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)


@dataclass(frozen=True)
class Candidate:
    chunk_id: int
    document_id: int
    score: float


@dataclass(frozen=True)
class TermStatistics:
    """A query lexeme (from ``word``) and the number of passages of the collections holding it."""

    word: str
    lexeme: str
    passages: int


def idf(*, passages: int, holding: int) -> float:
    """BM25's inverse document frequency as FTS5 computes it (never below 1e-6)."""
    return max(math.log((passages - holding + 0.5) / (holding + 0.5)), 1e-6)


def essential_terms(terms: Sequence[TermStatistics], *, budget: int = POSTINGS_BUDGET) -> list[str]:
    """The words whose passages are the candidates: the rarest first while their passages add up
    to at most ``budget`` (always the rarest one that any passage holds). Words no passage holds
    are left out: they match nothing."""
    chosen: list[str] = []
    total = 0
    for term in sorted((t for t in terms if t.passages > 0), key=lambda t: t.passages):
        if chosen and total + term.passages > budget:
            break
        chosen.append(term.word)
        total += term.passages
    return chosen


def rerank(candidates: Sequence[Candidate], *, limit: int) -> list[Candidate]:
    """The ``limit`` best of ``candidates`` (BM25 scores, any order) after document evidence, the
    best passage of each document first (see the module's docstring). Their scores are the
    evidence-weighted ones."""
    by_document: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        by_document.setdefault(candidate.document_id, []).append(candidate)
    weighed: list[tuple[float, int, int, Candidate]] = []
    for passages in by_document.values():
        passages.sort(key=lambda c: (-c.score, c.chunk_id))
        scores = [c.score for c in passages]
        evidence = [
            c.score + DOCUMENT_EVIDENCE * sum((scores[:i] + scores[i + 1 :])[:EVIDENCE_PASSAGES])
            for i, c in enumerate(passages)
        ]
        # Mathematically evidence keeps a document's order (it adds less to a passage than the
        # passage is ahead by); sorting the sums keeps it through rounding too.
        weighed += [
            (-score, place, c.chunk_id, Candidate(c.chunk_id, c.document_id, score))
            for place, (c, score) in enumerate(
                zip(passages, sorted(evidence, reverse=True), strict=True)
            )
        ]
    weighed.sort(key=lambda entry: entry[:3])
    firsts: list[Candidate] = []
    rest: list[Candidate] = []
    seen: set[int] = set()
    for *_, candidate in weighed:
        (rest if candidate.document_id in seen else firsts).append(candidate)
        seen.add(candidate.document_id)
    return (firsts + rest)[: max(limit, 0)]


def fuse(rankings: Sequence[Sequence[Candidate]], *, k: int = RRF_K) -> list[Candidate]:
    """Reciprocal rank fusion: each passage scores the sum of 1 / (``k`` + its rank) over the
    rankings that hold it (rank 1 first); best first, ties by the best rank, then id."""
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    documents: dict[int, int] = {}
    for ranking in rankings:
        for rank, candidate in enumerate(ranking, start=1):
            scores[candidate.chunk_id] = scores.get(candidate.chunk_id, 0.0) + 1 / (k + rank)
            best[candidate.chunk_id] = min(best.get(candidate.chunk_id, rank), rank)
            documents[candidate.chunk_id] = candidate.document_id
    order = sorted(scores, key=lambda chunk: (-scores[chunk], best[chunk], chunk))
    return [Candidate(chunk, documents[chunk], scores[chunk]) for chunk in order]


# The lexemes of the query words (PostgreSQL's 'english' configuration: stemmed, its stop words
# dropped) and how many passages of the collections hold each. The words are bound values, never
# query syntax.
POSTGRES_TERMS = """
SELECT w.word, w.lexeme, coalesce(sum(t.chunks), 0) AS passages
FROM (
    SELECT word, unnest(tsvector_to_array(to_tsvector('english', word))) AS lexeme
    FROM unnest(CAST(:words AS text[])) AS word
) AS w
LEFT JOIN kb_terms AS t ON t.lexeme = w.lexeme AND t.collection_id = ANY(:collection_ids)
GROUP BY w.word, w.lexeme
"""
POSTGRES_SIZES = """
SELECT col.id, coalesce(s.chunks, 0), coalesce(s.tokens, 0)
FROM kb_collections AS col LEFT JOIN kb_collection_sizes AS s ON s.collection_id = col.id
WHERE col.name = ANY(:names)
"""
# BM25 of the candidates. ``found``: the candidate's tsvector cut down to the query lexemes (the
# inner ts_delete leaves the lexemes it lacks, the outer deletes those), which unnest then reads
# cheaply; a lexeme's weighted frequency counts its title/heading occurrences (weight A)
# CONTEXT_WEIGHT times. ``:matching`` holds only words of letters and digits joined by "|".
POSTGRES_BM25 = f"""
WITH terms AS (
    SELECT lexeme, idf FROM unnest(CAST(:lexemes AS text[]), CAST(:idfs AS float8[]))
        AS t(lexeme, idf)
), candidates AS (
    SELECT c.id, c.document_id, c.token_count,
           ts_delete(c.search, tsvector_to_array(ts_delete(c.search, CAST(:lexemes AS text[]))))
               AS found
    FROM kb_chunks AS c JOIN kb_documents AS d ON d.id = c.document_id
    WHERE c.search @@ to_tsquery('english', :matching) AND d.collection_id = ANY(:collection_ids)
), frequencies AS (
    SELECT a.id, a.document_id, a.token_count, u.lexeme,
           cardinality(u.weights)
               + {CONTEXT_WEIGHT - 1} * cardinality(array_positions(u.weights, 'A')) AS tf
    FROM candidates AS a CROSS JOIN LATERAL unnest(a.found) AS u
)
SELECT f.id, f.document_id,
       sum(t.idf * f.tf * {BM25_K1 + 1}
           / (f.tf + {BM25_K1} * ({1 - BM25_B} + {BM25_B} * f.token_count / :average_length)))
           AS score
FROM frequencies AS f JOIN terms AS t ON t.lexeme = f.lexeme
GROUP BY f.id, f.document_id
ORDER BY score DESC, f.id
LIMIT :candidates
"""
# Keeping the statistics: a document's chunks counted into (sign 1, after they are written) or out
# of (sign -1, before they are deleted) its collection's. Lexemes in sorted order, so that two
# writers of one collection lock the rows they share in the same order (no deadlock).
POSTGRES_COUNT_TERMS = """
INSERT INTO kb_terms (collection_id, lexeme, chunks)
SELECT :collection_id, u.lexeme, :sign * count(*)
FROM kb_chunks AS c CROSS JOIN LATERAL unnest(tsvector_to_array(c.search)) AS u(lexeme)
WHERE c.document_id = :document_id
GROUP BY u.lexeme
ORDER BY u.lexeme
ON CONFLICT (collection_id, lexeme) DO UPDATE SET chunks = kb_terms.chunks + excluded.chunks
RETURNING lexeme, chunks
"""
POSTGRES_DROP_TERMS = """
DELETE FROM kb_terms
WHERE collection_id = :collection_id AND lexeme = ANY(:lexemes) AND chunks <= 0
"""
POSTGRES_COUNT_SIZE = """
INSERT INTO kb_collection_sizes (collection_id, chunks, tokens)
SELECT :collection_id, :sign * count(*), :sign * coalesce(sum(token_count), 0)
FROM kb_chunks WHERE document_id = :document_id
ON CONFLICT (collection_id) DO UPDATE
SET chunks = kb_collection_sizes.chunks + excluded.chunks,
    tokens = kb_collection_sizes.tokens + excluded.tokens
"""
