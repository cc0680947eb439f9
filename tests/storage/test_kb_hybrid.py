"""Optional hybrid retrieval (bot/kb/embeddings.py, ``SOLARBOT_KB_EMBEDDINGS``): a tiny BERT-like
model with random weights, built in a fixture (never downloaded), gives the chunks vectors on
ingest; they go with their chunks (sync, rm); a query's vector is fused with the keyword ranking
by reciprocal rank fusion. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from bot.answering import retrieve
from bot.errors import ConfigError
from bot.kb.chunking import ChunkLimits
from bot.kb.embeddings import Embedder, load_embedder, passage_text
from bot.kb.ingest import Ingestor, IngestProgress
from bot.kb.sources import FetchPolicy
from bot.settings import load_settings
from storage.repository import Repository
from storage.repository.kb_ranking import Candidate, fuse
from storage.repository.knowledge import QueryVector
from tests.support.kb_support import build_tiny_embedder

WORDS = [
    "refunds",
    "are",
    "paid",
    "within",
    "fourteen",
    "days",
    "parcels",
    "travel",
    "by",
    "zeppelin",
    "overnight",
    "warranty",
    "lasts",
    "thirty",
    "six",
    "months",
    "for",
    "every",
    "toaster",
    "holidays",
    "employees",
    "get",
    "marmalade",
    "leave",
    "the",
    "a",
    "of",
    "to",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"), WORDS)


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder(model_dir)


def count(repository: Repository, table: str) -> int:
    with repository.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def ingestor(repository: Repository, embedder: Embedder | None) -> Ingestor:
    return Ingestor(
        repository,
        count=lambda bodies: [len(body.split()) for body in bodies],
        limits=ChunkLimits(max_tokens=40, min_tokens=20),
        policy=FetchPolicy(),
        progress=IngestProgress(bar=False, stream=io.StringIO()),
        embedder=embedder,
    )


def write_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "refunds": folder / "refunds.md",
        "shipping": folder / "shipping.md",
        "warranty": folder / "warranty.md",
    }
    files["refunds"].write_text("# Refunds\n\nRefunds are paid within fourteen days.\n")
    files["shipping"].write_text("# Shipping\n\nParcels travel by zeppelin overnight.\n")
    files["warranty"].write_text(
        "# Warranty\n\nWarranty lasts thirty six months for every toaster.\n\n"
        + "\n\n".join("Holidays: employees get marmalade leave. " * 4 for _ in range(3))
    )
    return files


def test_vectors_are_normalised_per_text_whatever_the_batch(embedder: Embedder) -> None:
    short, long = "refunds are paid", "parcels travel by zeppelin overnight every toaster"
    together = embedder.embed([short, long])
    alone = embedder.embed([short])
    assert together.shape == (2, embedder.dimensions) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together[0], alone[0], atol=1e-5)  # padding is left out of the mean
    assert embedder.embed([]).shape == (0, embedder.dimensions)
    assert embedder.model_id == f"{embedder.model_id.split('/')[0]}/32"


def test_vectors_are_written_on_ingest_and_go_with_their_chunks(
    repository: Repository, embedder: Embedder, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path / "kb")
    report = asyncio.run(
        ingestor(repository, embedder).add(collection="c", sources=[str(tmp_path / "kb")])
    )
    assert report.added == 3 and report.chunks >= 4
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks") == report.chunks
    files["shipping"].unlink()
    files["refunds"].write_text("# Refunds\n\nRefunds are now paid within thirty days.\n")
    report = asyncio.run(ingestor(repository, embedder).sync(collection="c"))
    assert (report.replaced, report.removed) == (1, 1)
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks")
    with repository.engine.connect() as connection:
        orphans = connection.execute(
            text(
                "SELECT count(*) FROM kb_vectors v LEFT JOIN kb_chunks c ON c.id = v.chunk_id "
                "WHERE c.id IS NULL"
            )
        ).scalar_one()
    assert orphans == 0
    repository.remove_document(collection="c", source_uri=str(files["refunds"]))
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks")
    repository.remove_collection(collection="c")
    assert count(repository, "kb_vectors") == 0


def test_switching_embeddings_on_makes_sync_write_every_document_with_vectors(
    repository: Repository, embedder: Embedder, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "kb")
    asyncio.run(ingestor(repository, None).add(collection="c", sources=[str(tmp_path / "kb")]))
    assert count(repository, "kb_vectors") == 0
    report = asyncio.run(ingestor(repository, embedder).sync(collection="c"))
    assert report.replaced == 3
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks")
    again = asyncio.run(ingestor(repository, embedder).sync(collection="c"))
    assert (again.unchanged, again.replaced) == (3, 0)


def test_a_query_no_keyword_matches_finds_the_nearest_passages_by_vector(
    repository: Repository, embedder: Embedder, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "kb")
    asyncio.run(ingestor(repository, embedder).add(collection="c", sources=[str(tmp_path / "kb")]))
    unknown = "qqqq xyzzy"
    assert repository.search_passages(collections=["c"], query=unknown) == []
    [target] = repository.search_passages(collections=["c"], query="zeppelin", limit=1)
    [row] = embedder.embed([passage_text(target.title, target.heading_path, target.text)])
    vector = QueryVector(model=embedder.model_id, vector=row.tolist())
    hits = repository.search_passages(collections=["c"], query=unknown, query_vector=vector)
    assert hits[0].chunk_id == target.chunk_id  # its own vector: cosine 1
    assert len(hits) == min(5, count(repository, "kb_chunks"))
    other_model = QueryVector(model="another/32", vector=row.tolist())
    assert (
        repository.search_passages(collections=["c"], query=unknown, query_vector=other_model) == []
    )
    assert (
        repository.search_passages(collections=["nope"], query=unknown, query_vector=vector) == []
    )
    # The answering path embeds the question itself (on the worker's thread).
    found = retrieve(
        repository, collections=["c"], newest=unknown, previous=None, limit=3, embedder=embedder
    )
    assert len(found) == 3
    assert retrieve(repository, collections=["c"], newest=unknown, previous=None, limit=3) == []


rankings = st.lists(
    st.lists(st.integers(1, 30), unique=True, max_size=12).map(
        lambda ids: [Candidate(i, i % 4, 0.0) for i in ids]
    ),
    min_size=1,
    max_size=3,
)


@given(rankings)
def test_fusion_keeps_every_passage_and_what_every_ranking_prefers(
    given_rankings: list[list[Candidate]],
) -> None:
    fused = [c.chunk_id for c in fuse(given_rankings)]
    assert sorted(fused) == sorted({c.chunk_id for r in given_rankings for c in r})
    position = {chunk: n for n, chunk in enumerate(fused)}
    ranks = [{c.chunk_id: n for n, c in enumerate(r)} for r in given_rankings]
    for a in fused:
        for b in fused:
            # Ahead (or tied) in every ranking, and in all of them: ahead in the fusion.
            if all(a in r and b in r and r[a] < r[b] for r in ranks):
                assert position[a] < position[b]
    if len(given_rankings) == 1:
        assert fused == [c.chunk_id for c in given_rankings[0]]


def test_the_setting_names_a_model_folder_or_is_off(model_dir: Path, tmp_path: Path) -> None:
    assert load_settings(environ={}, env_file=None).kb_embeddings is None
    assert load_embedder(None) is None
    settings = load_settings(environ={"SOLARBOT_KB_EMBEDDINGS": str(model_dir)}, env_file=None)
    assert settings.kb_embeddings == model_dir
    with pytest.raises(ConfigError, match="SOLARBOT_KB_EMBEDDINGS"):
        load_settings(environ={"SOLARBOT_KB_EMBEDDINGS": str(tmp_path)}, env_file=None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="SOLARBOT_KB_EMBEDDINGS: cannot load"):
        Embedder(broken)
