"""Learning from the team: an admin's 📚 reaction on a chat message adds it to the channel's
knowledge base; removing the reaction removes it again.

The message becomes a document of the channel's first attached collection (``kb NAME``), whose
source is ``chat:PLATFORM:WORKSPACE:CHANNEL:MESSAGE`` (``kb sync`` leaves such sources alone: they
cannot be read again) and whose link goes back to the message, so an answer citing it links
there. Its text is chunked like any document (``bot.kb.chunking``, Markdown), counted with SOLAR's
tokenizer once one is loaded (before that, by words, an estimate only used for display). With
hybrid retrieval on (``SOLARBOT_KB_EMBEDDINGS``) its chunks get their vectors as ``kb add`` gives
them (``bot.kb.embeddings.chunk_vectors``, on the intake's thread, never the event loop), and
its checksum names the model as ``kb add``'s does, so a message learned before the model was
set gets its vectors when an admin reacts again. Removing the reaction removes the document,
chunks and vectors. A channel without a collection learns nothing. Adapters decide who is an
admin and fetch the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot import texts
from bot.generation.engine import Tokenizer
from bot.kb.chunking import ChunkLimits, chunk_blocks, tokenizer_counter
from bot.kb.embeddings import Embedder, chunk_vectors
from bot.kb.extract import Format, extract
from bot.kb.ingest import content_checksum
from bot.knowledge import ChunkDraft
from storage.repository import Repository

# 📚 (any variation selector) on Discord; Slack's name for it.
LEARN_EMOJI = frozenset({"📚", "books"})
_TITLE_EXCERPT = 60


def is_learning(emoji: str) -> bool:
    return emoji.split("::", 1)[0].strip("\ufe0f") in LEARN_EMOJI


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    """A message an admin marked with 📚, as its adapter fetched it."""

    platform: str
    workspace: str
    channel: str
    message_id: str
    text: str
    author_name: str
    link: str  # back to the message on its platform


def source_uri(platform: str, workspace: str, channel: str, message_id: str) -> str:
    return f"chat:{platform}:{workspace}:{channel}:{message_id}"


def title_of(message: ChatMessage) -> str:
    first_line = next((line.strip() for line in message.text.splitlines() if line.strip()), "")
    if len(first_line) > _TITLE_EXCERPT:
        first_line = first_line[: _TITLE_EXCERPT - 1] + "…"
    return texts.KB_LEARNED_TITLE.format(
        author=message.author_name or texts.KB_LEARNED_SOMEONE, excerpt=first_line
    )


@dataclass(frozen=True, kw_only=True)
class LearnedDocument:
    """What a learned message is stored as: its chunks and the checksum ``kb add`` would give."""

    chunks: list[ChunkDraft]
    checksum: str


def document_of(
    text: str, *, title: str, tokenizer: Tokenizer | None, embedding_model: str = ""
) -> LearnedDocument:
    extracted = extract(text.encode("utf-8"), fmt=Format.MARKDOWN, fallback_title="")

    def by_words(parts: Sequence[str]) -> list[int]:
        return [max(1, len(part.split())) for part in parts]

    limits = ChunkLimits()
    count = tokenizer_counter(tokenizer) if tokenizer is not None else by_words
    return LearnedDocument(
        chunks=chunk_blocks(extracted.blocks, count=count, limits=limits),
        checksum=content_checksum(title, extracted.blocks, limits, embedding_model=embedding_model),
    )


def learn(
    repository: Repository,
    message: ChatMessage,
    *,
    tokenizer: Tokenizer | None,
    embedder: Embedder | None = None,
) -> str | None:
    """Add ``message`` to its channel's first collection, with vectors when ``embedder`` is given
    (hybrid retrieval; slow: call this on a thread); returns the collection (None: the channel
    has none, or the message has no text)."""
    config = repository.channel_config(
        platform=message.platform, workspace=message.workspace, channel=message.channel
    )
    if not config.kb_collections or not message.text.strip():
        return None
    title = title_of(message)
    document = document_of(
        message.text,
        title=title,
        tokenizer=tokenizer,
        embedding_model=embedder.model_id if embedder is not None else "",
    )
    if not document.chunks:
        return None
    collection = config.kb_collections[0]
    repository.add_document(
        collection=collection,
        source_uri=source_uri(
            message.platform, message.workspace, message.channel, message.message_id
        ),
        title=title,
        link=message.link,
        checksum=document.checksum,
        chunks=document.chunks,
        vectors=chunk_vectors(embedder, title, document.chunks),
    )
    return collection


def forget(
    repository: Repository, *, platform: str, workspace: str, channel: str, message_id: str
) -> str | None:
    """Remove a learned message from its channel's collections; returns the collection it was
    in (None: it was not learned)."""
    config = repository.channel_config(platform=platform, workspace=workspace, channel=channel)
    uri = source_uri(platform, workspace, channel, message_id)
    for collection in config.kb_collections:
        if repository.remove_document(collection=collection, source_uri=uri):
            return collection
    return None
