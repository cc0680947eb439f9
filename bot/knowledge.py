"""The knowledge base's platform-neutral records: what a search returns and what ingestion
stores. No SQL here (``storage.repository.knowledge`` holds the queries)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, kw_only=True)
class Passage:
    """A chunk found by a search, with what a citation needs."""

    chunk_id: int
    document_id: int
    collection: str
    title: str  # the document's title
    link: str  # http(s) URL of the page, or the file path for files
    heading_path: tuple[str, ...]
    text: str  # the chunk's text
    token_count: int  # counted with SOLAR's tokenizer at ingestion
    score: float  # higher is better; comparable within one search


@dataclass(frozen=True, kw_only=True)
class ChunkDraft:
    """A chunk to store: its place in the document, the headings above it, its text."""

    position: int
    heading_path: tuple[str, ...]
    text: str
    token_count: int


@dataclass(frozen=True, kw_only=True)
class CollectionInfo:
    name: str
    documents: int
    chunks: int
    updated_at: datetime | None  # the newest document's, None while empty


@dataclass(frozen=True, kw_only=True)
class DocumentInfo:
    """A stored document, without its chunks (what ``kb sync`` compares against)."""

    document_id: int
    collection: str
    source_uri: str
    title: str
    link: str
    checksum: str
    chunks: int
    updated_at: datetime
    origin: str  # what `kb add` was given: a folder, a sitemap, or the source itself


class DocumentOutcome(enum.StrEnum):
    ADDED = "added"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, kw_only=True)
class DocumentResult:
    document_id: int
    outcome: DocumentOutcome
    chunks: int
