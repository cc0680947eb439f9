"""Knowledge-base ranking (storage/repository/kb_ranking.py, migration 0016): BM25 on both
databases (PostgreSQL's from statistics kept with the documents, exact through every write),
document evidence and one passage per document first."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from bot.knowledge import ChunkDraft
from storage import database
from storage.repository import Repository
from storage.repository.kb_ranking import (
    Candidate,
    TermStatistics,
    essential_terms,
    idf,
    rerank,
)
from tests.support.kb_support import assert_ranking_statistics_exact

WORDS = ["walrus", "kiwi", "sprocket", "zeppelin", "marmalade", "toaster", "pelican", "refund"]


def drafts(texts: Sequence[str], heading: tuple[str, ...] = ()) -> list[ChunkDraft]:
    return [
        ChunkDraft(position=i, heading_path=heading, text=body, token_count=len(body.split()))
        for i, body in enumerate(texts)
    ]


def add(repository: Repository, source: str, texts: Sequence[str], collection: str = "c") -> None:
    repository.add_document(
        collection=collection,
        source_uri=source,
        title=source,
        link=f"https://example.test/{source}",
        checksum=str(hash(tuple(texts))),
        chunks=drafts(texts),
    )


candidates = st.lists(
    st.builds(
        Candidate,
        chunk_id=st.integers(1, 10_000),
        document_id=st.integers(1, 6),
        score=st.floats(0.0, 50.0, allow_nan=False),
    ),
    max_size=40,
    unique_by=lambda c: c.chunk_id,
)


@given(candidates, st.integers(0, 50))
def test_rerank_puts_each_documents_best_passage_first_and_keeps_its_own_order(
    given_candidates: list[Candidate], limit: int
) -> None:
    ranked = rerank(given_candidates, limit=limit)
    ids = [c.chunk_id for c in ranked]
    assert len(ids) == len(set(ids)) == min(limit, len(given_candidates))
    assert set(ids) <= {c.chunk_id for c in given_candidates}
    documents = {c.document_id for c in given_candidates}
    leading = [c.document_id for c in ranked[: len(documents)]]
    assert len(set(leading)) == len(leading)  # one passage per document before any second
    original = {c.chunk_id: c.score for c in given_candidates}
    for document in documents:
        own = [original[c.chunk_id] for c in ranked if c.document_id == document]
        assert own == sorted(own, reverse=True)  # evidence never reorders a document's passages
    for candidate in ranked:  # evidence only adds
        assert candidate.score >= original[candidate.chunk_id]


@given(candidates)
def test_rerank_of_one_passage_per_document_is_plain_score_order(
    given_candidates: list[Candidate],
) -> None:
    singles = {c.document_id: c for c in given_candidates}.values()
    ranked = rerank(list(singles), limit=50)
    assert ranked == sorted(singles, key=lambda c: (-c.score, c.chunk_id))


term_statistics = st.lists(
    st.builds(
        TermStatistics,
        word=st.sampled_from(WORDS),
        lexeme=st.just(""),
        passages=st.integers(0, 900),
    ),
    max_size=8,
    unique_by=lambda t: t.word,
)


@given(term_statistics, st.integers(1, 2_000))
def test_candidates_come_from_the_rarest_words_within_the_budget(
    terms: list[TermStatistics], budget: int
) -> None:
    chosen = essential_terms(terms, budget=budget)
    held = {t.word: t.passages for t in terms}
    assert all(held[word] > 0 for word in chosen)
    if any(t.passages for t in terms):
        assert chosen  # the rarest word that matches anything, at least
    assert len(chosen) == 1 or sum(held[word] for word in chosen) <= budget
    left_out = [t.passages for t in terms if t.passages > 0 and t.word not in chosen]
    assert all(held[word] <= rest for word in chosen for rest in left_out)


@given(st.integers(1, 10_000), st.data())
def test_idf_falls_as_more_passages_hold_the_word(passages: int, data: st.DataObject) -> None:
    fewer = data.draw(st.integers(0, passages))
    more = data.draw(st.integers(fewer, passages))
    assert idf(passages=passages, holding=fewer) >= idf(passages=passages, holding=more) > 0


def test_a_rare_word_outranks_a_common_one_repeated(repository: Repository) -> None:
    """The inverse document frequency at work (PostgreSQL's ts_rank had none): ``zeppelin`` is in
    one passage, ``toaster`` in every one, repeated in some."""
    for n in range(12):
        add(repository, f"filler-{n}", [f"the toaster number {n} hums", "plain toaster notes"])
    add(repository, "loud", ["toaster toaster toaster toaster toaster toaster toaster"])
    add(repository, "rare", ["a toaster shaped like a zeppelin"])
    hits = repository.search_passages(collections=["c"], query="toaster zeppelin", limit=3)
    assert hits[0].link == "https://example.test/rare"
    assert hits[1].link == "https://example.test/loud"


def test_the_first_hits_are_distinct_documents_best_first(repository: Repository) -> None:
    add(repository, "big", [f"walrus walrus walrus note {n}" for n in range(5)])
    add(repository, "small", ["one walrus among many other quite long words " * 2])
    hits = repository.search_passages(collections=["c"], query="walrus", limit=4)
    assert [hit.link.rsplit("/", 1)[1] for hit in hits] == ["big", "small", "big", "big"]
    assert [hit.score for hit in hits[2:]] == sorted((hit.score for hit in hits[2:]), reverse=True)


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["x", "y"]),
            st.lists(
                st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
                max_size=3,
            ),
        ),
        st.tuples(st.just("remove"), st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y"])),
        st.tuples(st.just("drop"), st.sampled_from(["x", "y"])),
    ),
    max_size=8,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_statistics_stay_exact_through_adds_replacements_and_removals(
    repository: Repository, steps: list[tuple]
) -> None:
    for info in repository.collections():
        repository.remove_collection(collection=info.name)
    for step in steps:
        if step[0] == "add":
            _, source, collection, texts = step
            add(repository, source, texts, collection=collection)
        elif step[0] == "remove":
            repository.remove_document(collection=step[2], source_uri=step[1])
        else:
            repository.remove_collection(collection=step[1])
        assert_ranking_statistics_exact(repository.engine)


def test_migration_0016_counts_what_is_stored_and_goes_down_cleanly(database_url: str) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine, revision="0015")
        repository = Repository(engine)
        # Written by 0015's code path: the statistics do not exist yet.
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO kb_collections (name, created_at) VALUES ('c', CURRENT_TIMESTAMP)"
            )
            connection.exec_driver_sql(
                "INSERT INTO kb_documents (collection_id, source_uri, origin, title, link, "
                "checksum, updated_at) SELECT id, 's', 's', 'Walruses', 'l', 'x', "
                "CURRENT_TIMESTAMP FROM kb_collections"
            )
            connection.exec_driver_sql(
                "INSERT INTO kb_chunks (document_id, position, heading_path, context, text, "
                "token_count) SELECT id, 0, '[]', 'Walruses', 'walrus tusks and kiwi', 4 "
                "FROM kb_documents"
            )
        database.upgrade(engine)
        assert_ranking_statistics_exact(engine)
        [hit] = repository.search_passages(collections=["c"], query="kiwi")
        assert hit.text == "walrus tusks and kiwi"
        database.downgrade(engine, "0015")
        assert not {"kb_terms", "kb_collection_sizes", "kb_vectors"} & set(
            inspect(engine).get_table_names()
        )
        database.upgrade(engine)
        assert "kb_vectors" in inspect(engine).get_table_names()
        assert_ranking_statistics_exact(engine)
        add(repository, "t", ["kiwi kiwi"])
        assert_ranking_statistics_exact(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("query", ['kiwi" OR 1=1 --', "kiwi:*", "(kiwi | !walrus)", "kiwi & "])
def test_hostile_words_stay_words_in_the_bm25_statistics(
    repository: Repository, query: str
) -> None:
    add(repository, "k", ["a kiwi and a walrus"])
    hits = repository.search_passages(collections=["c"], query=query)
    assert [hit.text for hit in hits] == ["a kiwi and a walrus"]


def test_concurrent_writers_of_one_collection_keep_the_statistics_exact(database_url: str) -> None:
    """Threads (each its own connection) replace different documents of one collection at once,
    each swapping its words for another's (a replacement counts its old words out and the new
    ones in: without taking turns two such writers wait on each other's rows): nobody deadlocks
    or fails, and the statistics stay exact."""
    import threading

    repository = Repository.open(database_url)
    try:
        writers = len(WORDS)  # writer n moves from word n+r-1 to n+r: a ring of waits
        errors: list[BaseException] = []
        start = threading.Barrier(writers)

        def write(n: int) -> None:
            try:
                for round_ in range(8):
                    start.wait()
                    word = WORDS[(n + round_) % len(WORDS)]
                    add(repository, f"s{n}", [f"{word} {word}"])
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)
                start.abort()

        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert_ranking_statistics_exact(repository.engine)
    finally:
        repository.close()
