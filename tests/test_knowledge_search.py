"""Knowledge-base storage and search on SQLite (FTS5, bm25) and PostgreSQL (tsvector, GIN):
documents replace by source, a document is one transaction, hostile queries never break the
query syntax and never reach other collections (issue 14)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from bot.errors import KnowledgeBaseError
from bot.knowledge import ChunkDraft, DocumentOutcome
from storage import database
from storage.repository import Repository
from storage.repository.knowledge import QUERY_MAX_TERMS, fts5_query, query_terms

DOCS = {
    "sorting.md": (
        "Sorting HOWTO",
        [
            (("Key functions",), "Use the key parameter of sorted() to sort a list by any field."),
            (("Stability",), "Sorts are stable: equal records keep their original order."),
        ],
    ),
    "dict.md": (
        "Dictionaries",
        [(("Views",), "A dictionary maps keys to values; keys() returns a view of its keys.")],
    ),
}
OTHER = ("secret.md", "Internal", [((), "Sorting the secret payroll list by salary.")])


def chunks(parts: list[tuple[tuple[str, ...], str]]) -> list[ChunkDraft]:
    return [
        ChunkDraft(position=i, heading_path=path, text=body, token_count=len(body.split()))
        for i, (path, body) in enumerate(parts)
    ]


def fill(repository: Repository) -> None:
    for source, (title, parts) in DOCS.items():
        repository.add_document(
            collection="docs",
            source_uri=source,
            title=title,
            link=f"/docs/{source}",
            checksum=f"sum-{source}",
            chunks=chunks(parts),
        )
    source, title, parts = OTHER
    repository.add_document(
        collection="hr",
        source_uri=source,
        title=title,
        link=source,
        checksum="x",
        chunks=chunks(parts),
    )


def assert_index_in_sync(repository: Repository) -> None:
    """SQLite: the FTS5 index holds exactly the chunks' current text (the triggers kept it in
    sync through every insert, replace and delete); PostgreSQL's column is generated."""
    if repository.dialect != "sqlite":
        return
    with repository.engine.begin() as connection:
        check = "INSERT INTO kb_chunks_fts(kb_chunks_fts, rank) VALUES ('integrity-check', 1)"
        connection.execute(text(check))
        [indexed] = connection.execute(text("SELECT count(*) FROM kb_chunks_fts")).scalars()
        [stored] = connection.execute(text("SELECT count(*) FROM kb_chunks")).scalars()
    assert indexed == stored


@pytest.fixture
def filled(repository: Repository) -> Iterator[Repository]:
    fill(repository)
    yield repository


def test_search_ranks_the_answering_passage_first_with_its_citation_fields(
    filled: Repository,
) -> None:
    [first, *_] = filled.search_passages(collections=["docs"], query="how do I sort a list by key?")
    assert first.title == "Sorting HOWTO"
    assert first.link == "/docs/sorting.md"
    assert first.heading_path == ("Key functions",)
    assert first.collection == "docs"
    assert "key parameter" in first.text
    assert first.token_count == len(first.text.split())
    hits = filled.search_passages(collections=["docs"], query="dictionary keys view", limit=10)
    assert hits[0].title == "Dictionaries"
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_search_stays_inside_the_given_collections(filled: Repository) -> None:
    docs = filled.search_passages(collections=["docs"], query="sorting list salary", limit=10)
    assert docs and {hit.collection for hit in docs} == {"docs"}
    both = filled.search_passages(collections=["docs", "hr"], query="payroll salary", limit=10)
    assert [hit.collection for hit in both] == ["hr"]
    assert filled.search_passages(collections=[], query="sorting") == []
    assert filled.search_passages(collections=["nope"], query="sorting") == []


def test_limit_caps_the_hits(filled: Repository) -> None:
    assert len(filled.search_passages(collections=["docs"], query="sort keys", limit=1)) == 1
    assert filled.search_passages(collections=["docs"], query="sort keys", limit=0) == []


def test_re_adding_unchanged_is_a_no_op_and_changed_replaces(filled: Repository) -> None:
    title, parts = DOCS["sorting.md"]
    same = filled.add_document(
        collection="docs",
        source_uri="sorting.md",
        title=title,
        link="/docs/sorting.md",
        checksum="sum-sorting.md",
        chunks=chunks(parts),
    )
    assert same.outcome is DocumentOutcome.UNCHANGED and same.chunks == 2
    changed = filled.add_document(
        collection="docs",
        source_uri="sorting.md",
        title=title,
        link="/docs/sorting.md",
        checksum="new",
        chunks=chunks([(("Reverse",), "Pass reverse=True to get descending order.")]),
    )
    assert changed.outcome is DocumentOutcome.REPLACED and changed.document_id == same.document_id
    assert filled.search_passages(collections=["docs"], query="stable records") == []
    [hit] = filled.search_passages(collections=["docs"], query="descending")
    assert hit.heading_path == ("Reverse",)
    info = {c.name: c for c in filled.collections()}
    assert (info["docs"].documents, info["docs"].chunks) == (2, 2)
    assert (info["hr"].documents, info["hr"].chunks) == (1, 1)
    assert_index_in_sync(filled)


def test_remove_document_and_collection_take_their_chunks_out_of_the_index(
    filled: Repository,
) -> None:
    assert filled.remove_document(collection="docs", source_uri="dict.md")
    assert not filled.remove_document(collection="docs", source_uri="dict.md")
    assert not filled.remove_document(collection="hr", source_uri="sorting.md")
    assert filled.search_passages(collections=["docs"], query="dictionary") == []
    assert filled.remove_collection(collection="hr") == 1
    assert filled.remove_collection(collection="hr") is None
    assert filled.search_passages(collections=["hr"], query="payroll") == []
    assert [c.name for c in filled.collections()] == ["docs"]
    assert_index_in_sync(filled)


def test_a_document_that_cannot_be_stored_is_refused_whole(filled: Repository) -> None:
    bad = [*chunks([((), "fine text about sorting")]), *chunks([((), "nul \x00 inside")])]
    bad = [
        ChunkDraft(position=i, heading_path=(), text=c.text, token_count=1)
        for i, c in enumerate(bad)
    ]
    with pytest.raises(KnowledgeBaseError, match="chunk 1"):
        filled.add_document(
            collection="docs", source_uri="bad.md", title="t", link="l", checksum="c", chunks=bad
        )
    assert "bad.md" not in {d.source_uri for d in filled.documents()}
    with pytest.raises(KnowledgeBaseError, match="collection name"):
        filled.add_document(
            collection="", source_uri="x", title="t", link="l", checksum="c", chunks=[]
        )


HOSTILE = [
    '"',
    '""',
    "'",
    "NEAR(sort list)",
    "sort NEAR/2 list",
    "sort*",
    "*",
    "title:sort",
    ":",
    "^sort",
    "(sort OR",
    ")",
    "AND OR NOT",
    "sort AND NOT list",
    "'; DROP TABLE kb_chunks; --",
    "1 OR 1=1",
    "\x00sort",
    "sort\ud800list",
    "\udfff",
    "-sort",
    "!sort & list | <->",
    "sort <-> list",
    "_",
    "sort_list __ x²",
    "(sort & list) | (key & !value):*",
    "how do I sort a list by the key of one of many dicts in a list of lists with keys",
    "",
    "   ",
    "sort " * 5000,
    "é" * 10_000,
]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_break_the_syntax(filled: Repository, query: str) -> None:
    hits = filled.search_passages(collections=["docs"], query=query, limit=5)
    assert {hit.collection for hit in hits} <= {"docs"}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    query=st.text(max_size=300)
    | st.lists(
        st.sampled_from(
            [
                '"',
                "'",
                "NEAR",
                "AND",
                "OR",
                "NOT",
                "*",
                ":",
                "(",
                ")",
                "^",
                "-",
                "!",
                "&",
                "|",
                "<->",
                "_",
                "a_b",
                ":*",
                "²",
                "sort",
                "list",
                "key",
                "salary",
                "\x00",
                "\ud800",
                ";",
                "--",
                "title",
                "text",
            ]
        ),
        max_size=20,
    ).map(" ".join),
    collections=st.lists(st.sampled_from(["docs", "hr", "nope", "", "'"]), max_size=3),
)
def test_any_query_in_any_collections_never_raises_and_stays_inside(
    filled: Repository, query: str, collections: list[str]
) -> None:
    hits = filled.search_passages(collections=collections, query=query, limit=5)
    assert {hit.collection for hit in hits} <= set(collections)
    assert len(hits) <= 5


@given(query=st.text(max_size=500))
def test_fts5_query_quotes_every_term(query: str) -> None:
    match = fts5_query(query)
    terms = query_terms(query)
    assert len(terms) <= QUERY_MAX_TERMS
    if match is None:
        assert terms == []
    else:
        assert match.split(" OR ") == [f'"{term}"' for term in terms]
        assert all('"' not in term for term in terms)


def test_migration_0010_adds_the_knowledge_base_and_goes_down_keeping_the_rest(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        fill(repository)
        assert repository.search_passages(collections=["docs"], query="sort")
        database.downgrade(engine, "0009")
        names = set(inspect(engine).get_table_names())
        assert not {"kb_collections", "kb_documents", "kb_chunks", "kb_chunks_fts"} & names
        assert "handoff_pings" in names
        database.upgrade(engine)
        assert database.current_revision(engine) == database.head_revision()
        assert repository.collections() == []
        fill(repository)
        assert repository.search_passages(collections=["docs"], query="sort")
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                # The FTS index holds exactly the chunks (the triggers kept it in sync).
                check = (
                    "INSERT INTO kb_chunks_fts(kb_chunks_fts, rank) VALUES ('integrity-check', 1)"
                )
                connection.execute(text(check))
    finally:
        engine.dispose()


def test_a_small_collection_is_searched_whole_beside_a_big_one(repository: Repository) -> None:
    """SQLite ranks a window of the best matches of every collection first: a collection whose
    matches all rank below that window must still be found (and ranked among themselves)."""
    big = [((), f"sorting sorting sorting note {n}") for n in range(260)]
    repository.add_document(
        collection="big",
        source_uri="big",
        title="sorting",
        link="b",
        checksum="1",
        chunks=chunks(big),
    )
    small = [((), "a long text that mentions sorting once among many other words " * 3), ((), "x")]
    repository.add_document(
        collection="small", source_uri="s", title="s", link="s", checksum="1", chunks=chunks(small)
    )
    [hit] = repository.search_passages(collections=["small"], query="sorting", limit=3)
    assert hit.collection == "small"
    both = repository.search_passages(collections=["small", "big"], query="sorting", limit=5)
    assert {hit.collection for hit in both} == {"big"}


def test_concurrent_writers_of_one_source_take_turns(database_url: str) -> None:
    """Several threads (each its own connection) add the same new source at once: one adds it,
    the others see it (replaced or unchanged), nobody hits the unique key."""
    import threading

    repository = Repository.open(database_url)
    try:
        outcomes: list[DocumentOutcome] = []
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def add(n: int) -> None:
            start.wait()
            try:
                result = repository.add_document(
                    collection="race",
                    source_uri="same.md",
                    title="Same",
                    link="same.md",
                    checksum=str(n % 2),
                    chunks=chunks([((), f"racing text {n}")]),
                )
                outcomes.append(result.outcome)
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert outcomes.count(DocumentOutcome.ADDED) == 1
        [info] = repository.collections()
        assert (info.documents, info.chunks) == (1, 1)
    finally:
        repository.close()
