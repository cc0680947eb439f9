"""📚 learning with hybrid retrieval on (``SOLARBOT_KB_EMBEDDINGS``, bot/learning.py): a learned
message's chunks get the vectors ``kb add`` would give them (``bot.kb.embeddings.chunk_vectors``),
computed on the intake's thread, not the event loop; a query no keyword matches finds the
message by its vector; a message learned before the model was set gets vectors when an admin
reacts again; removing the reaction removes the vectors with the chunks. Through the real
``Intake`` and a tiny random-weight BERT (tests/support/kb_support.py), on SQLite and PostgreSQL.
The platforms' 📚 reactions are tested end to end in tests/platforms/test_kb_chat.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from adapters.fake import FakeAdapter
from bot.errors import ConfigError
from bot.intake import Intake
from bot.kb.embeddings import Embedder, passage_text
from bot.learning import ChatMessage, source_uri
from bot.records import ChannelConfig
from bot.service import Service
from bot.settings import load_settings
from storage.repository import Repository
from storage.repository.knowledge import QueryVector
from tests.support.kb_support import build_tiny_embedder

WORDS = [
    "restart",
    "the",
    "agent",
    "after",
    "every",
    "upgrade",
    "it",
    "hangs",
    "otherwise",
    "refunds",
    "take",
    "fourteen",
    "days",
    "zeppelin",
    "parcels",
    "travel",
    "overnight",
    "marmalade",
    "warranty",
    "toaster",
]
CHANNEL = {"platform": "slack", "workspace": "T1", "channel": "C1"}


class ThreadNoting(Embedder):
    """A real embedder that also notes the threads it ran on."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.threads: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.append(threading.get_ident())
        return super().embed(texts)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("embedder"), WORDS)


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> ThreadNoting:
    return ThreadNoting(model_dir)


def message(text: str, message_id: str = "1690000000.000100") -> ChatMessage:
    return ChatMessage(
        **CHANNEL,
        message_id=message_id,
        text=text,
        author_name="Carol",
        link=f"https://example.test/archives/C1/{message_id}",
    )


def with_collection(repository: Repository) -> None:
    repository.set_channel_config(**CHANNEL, config=ChannelConfig(kb_collections=("team",)))


def stored_vectors(repository: Repository, uri: str) -> list[tuple[str, str, np.ndarray]]:
    """(chunk text, model, vector) of the document ``uri``, in chunk order."""
    with repository.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.text, v.model, v.vector FROM kb_chunks c "
                "JOIN kb_documents d ON d.id = c.document_id "
                "LEFT JOIN kb_vectors v ON v.chunk_id = c.id "
                "WHERE d.source_uri = :uri ORDER BY c.position, c.id"
            ),
            {"uri": uri},
        ).all()
    return [
        (
            str(row[0]),
            str(row[1] or ""),
            np.frombuffer(bytes(row[2]), dtype=np.float32) if row[2] is not None else np.zeros(0),
        )
        for row in rows
    ]


def count(repository: Repository, table: str) -> int:
    with repository.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def intake_with(repository: Repository, embedder: Embedder | None) -> Intake:
    intake = Intake(repository)
    intake.embedder = embedder
    return intake


def test_a_learned_message_gets_the_vectors_kb_add_gives_and_loses_them_when_forgotten(
    repository: Repository, embedder: ThreadNoting
) -> None:
    with_collection(repository)
    learned = message("Restart the agent after every upgrade: it hangs otherwise.")
    uri = source_uri("slack", "T1", "C1", learned.message_id)
    intake = intake_with(repository, embedder)

    async def react() -> int:
        embedder.threads.clear()
        assert await intake.learn(learned, added=True) == "team"
        return threading.get_ident()

    loop_thread = asyncio.run(react())
    assert embedder.threads and loop_thread not in embedder.threads  # never on the event loop
    stored = stored_vectors(repository, uri)
    [document] = [d for d in repository.documents(collection="team") if d.source_uri == uri]
    assert stored and all(model == embedder.model_id for _, model, _ in stored)
    [passage] = repository.search_passages(collections=["team"], query="agent upgrade", limit=1)
    expected = embedder.embed([passage_text(document.title, passage.heading_path, stored[0][0])])
    assert np.allclose(stored[0][2], expected[0], atol=1e-6)

    # A question sharing no word with the message finds it by its vector.
    unknown = "qqqq xyzzy"
    assert repository.search_passages(collections=["team"], query=unknown) == []
    vector = QueryVector(model=embedder.model_id, vector=stored[0][2].tolist())
    [hit] = repository.search_passages(
        collections=["team"], query=unknown, query_vector=vector, limit=1
    )
    assert hit.link == learned.link

    assert asyncio.run(intake.learn(learned, added=False)) == "team"
    assert stored_vectors(repository, uri) == []
    assert count(repository, "kb_vectors") == 0


def test_a_message_learned_before_the_model_was_set_gets_vectors_when_reacted_to_again(
    repository: Repository, embedder: ThreadNoting
) -> None:
    with_collection(repository)
    learned = message("Refunds take fourteen days.")
    uri = source_uri("slack", "T1", "C1", learned.message_id)
    assert asyncio.run(intake_with(repository, None).learn(learned, added=True)) == "team"
    assert [model for _, model, _ in stored_vectors(repository, uri)] == [""]
    with_vectors = intake_with(repository, embedder)
    assert asyncio.run(with_vectors.learn(learned, added=True)) == "team"
    assert [model for _, model, _ in stored_vectors(repository, uri)] == [embedder.model_id]
    # Reacting once more with the same model changes nothing.
    before = repository.documents(collection="team")
    assert asyncio.run(with_vectors.learn(learned, added=True)) == "team"
    assert repository.documents(collection="team") == before
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks") == 1


paragraphs = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=120).map(" ".join),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(paragraphs)
def test_every_chunk_of_any_learned_message_has_its_vector(
    repository: Repository, embedder: ThreadNoting, parts: list[str]
) -> None:
    with_collection(repository)
    learned = message("\n\n".join(parts))
    uri = source_uri("slack", "T1", "C1", learned.message_id)
    intake = intake_with(repository, embedder)
    assert asyncio.run(intake.learn(learned, added=True)) == "team"
    stored = stored_vectors(repository, uri)
    [document] = [d for d in repository.documents(collection="team") if d.source_uri == uri]
    assert len(stored) == document.chunks >= 1
    assert all(model == embedder.model_id for _, model, _ in stored)
    norms = [float(np.linalg.norm(vector)) for _, _, vector in stored]
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert asyncio.run(intake.learn(learned, added=False)) == "team"
    assert count(repository, "kb_vectors") == count(repository, "kb_chunks") == 0


async def serve_adapters(tmp_path: Path, embeddings: Path) -> tuple[Service, asyncio.Task[None]]:
    """The service as ``solarbot run --role adapters`` runs it: adapters, no worker."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_KB_EMBEDDINGS": str(embeddings),
        }
    )
    service = Service(
        settings=settings,
        repository=Repository.open(settings.resolved_database_url()),
        engine=None,
        adapters=[FakeAdapter(platform="slack")],
        run_worker=False,
        drain_seconds=1,
    )
    return service, asyncio.create_task(service.run())


async def test_a_process_without_a_worker_learns_with_vectors_too(
    tmp_path: Path, model_dir: Path
) -> None:
    service, task = await serve_adapters(tmp_path / "data", model_dir)
    [adapter] = service.adapters
    try:
        async with asyncio.timeout(10):
            while not adapter.started:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
        with_collection(service.repository)
        learned = message("Parcels travel by zeppelin overnight.")
        assert await service.intake.learn(learned, added=True) == "team"
        stored = stored_vectors(
            service.repository, source_uri("slack", "T1", "C1", learned.message_id)
        )
        assert [model for _, model, _ in stored] == [f"{model_dir.name}/32"]
    finally:
        service.stopping.set()
        await task
        service.repository.close()


async def test_an_embedding_model_that_cannot_load_stops_start_up_before_the_adapters(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # looks like a model folder; holds none
    service, task = await serve_adapters(tmp_path / "data", empty)
    with pytest.raises(ConfigError, match="SOLARBOT_KB_EMBEDDINGS: cannot load"):
        await task
    assert not service.adapters[0].started  # type: ignore[attr-defined]
    service.repository.close()
