"""Adding sources to a collection and keeping them in sync.

Each document is read, extracted, chunked and stored in one transaction: a failure leaves the
stored copy as it was, gets one line (source and reason), and the other sources carry on.
A document whose content checksum (title, blocks and chunking limits) matches the stored one is
not chunked or written again. An origin (what ``kb add`` was given) is mirrored: its documents
that are gone (a deleted file, a page answering 404/410, a page no longer in the sitemap) are
removed; a source that merely fails (timeout, 500) keeps its stored copy."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bot import texts
from bot.errors import KnowledgeBaseError
from bot.kb.chunking import ChunkLimits, TokenCounter, chunk_blocks
from bot.kb.embeddings import Embedder, chunk_vectors
from bot.kb.extract import Format, extract, format_for
from bot.kb.sources import (
    Fetched,
    FetchPolicy,
    SourceGone,
    WebFetcher,
    is_re_readable,
    is_url,
    local_files,
    read_file,
    resolve_local,
    sitemap_locations,
)
from bot.knowledge import DocumentInfo, DocumentOutcome
from bot.logs import progress_bars_enabled
from storage.repository import Repository

logger = logging.getLogger(__name__)
LOG_EVERY_S = 15.0


@dataclass(kw_only=True)
class IngestReport:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0  # chunks written
    errors: list[str] = field(default_factory=list)


class IngestProgress:
    """A tqdm bar (documents, with chunks and errors) on a terminal, log lines elsewhere; one
    line per source that fails, either way."""

    def __init__(self, *, bar: bool | None = None, stream: TextIO | None = None) -> None:
        self._draw = progress_bars_enabled() if bar is None else bar
        self._stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        self.documents = 0
        self.chunks = 0
        self.errors = 0
        self._logged = time.perf_counter()

    def __enter__(self) -> IngestProgress:
        if self._draw:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

            self._bar = tqdm(
                desc="kb", unit="doc", file=self._stream, dynamic_ncols=True, leave=True
            )
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.close()
        logger.info(
            "kb: %d document(s), %d chunk(s) written, %d error(s)",
            self.documents,
            self.chunks,
            self.errors,
        )

    def document(self, chunks: int) -> None:
        self.documents += 1
        self.chunks += chunks
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(chunks=self.chunks, errors=self.errors, refresh=False)
        elif time.perf_counter() - self._logged >= LOG_EVERY_S:
            self._logged = time.perf_counter()
            logger.info(
                "kb: %d document(s), %d chunk(s), %d error(s) so far",
                self.documents,
                self.chunks,
                self.errors,
            )

    def error(self, source: str, reason: str) -> None:
        self.errors += 1
        line = f"kb: skipped {source}: {reason}"
        if self._bar is not None:
            self._bar.set_postfix(chunks=self.chunks, errors=self.errors, refresh=False)
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)


def content_checksum(
    title: str, blocks: Sequence[Any], limits: ChunkLimits, *, embedding_model: str = ""
) -> str:
    """What decides whether a stored document is still current: its title, blocks and chunking
    limits, and the embedding model when there is one (switching hybrid retrieval on, or to
    another model, makes ``kb sync`` write every document again, with vectors)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([title, limits.min_tokens, limits.max_tokens]).encode())
    if embedding_model:
        digest.update(json.dumps(["embeddings", embedding_model]).encode())
    for block in blocks:
        digest.update(json.dumps([block.kind.value, block.level, block.text]).encode())
    return digest.hexdigest()


class Ingestor:
    def __init__(
        self,
        repository: Repository,
        *,
        count: TokenCounter,
        limits: ChunkLimits,
        policy: FetchPolicy,
        progress: IngestProgress,
        embedder: Embedder | None = None,
    ) -> None:
        """``embedder``: hybrid retrieval is on; every chunk written gets its vector."""
        self.repository = repository
        self.embedder = embedder
        self.count = count
        self.limits = limits
        self.policy = policy
        self.progress = progress
        self.report = IngestReport()

    async def add(self, *, collection: str, sources: Sequence[str]) -> IngestReport:
        """Add (or refresh) every source; an origin's vanished documents are removed."""
        stored = self._stored(collection)
        async with WebFetcher(self.policy) as fetcher:
            for source in sources:
                origin = source if is_url(source) else str(resolve_local(source))
                await self._origin(collection, origin, stored, fetcher)
        return self.report

    async def sync(self, *, collection: str | None) -> IngestReport:
        """Read every origin of ``collection`` (or of every collection) again."""
        documents = self.repository.documents(collection=collection)
        names = list(dict.fromkeys(document.collection for document in documents))
        async with WebFetcher(self.policy) as fetcher:
            for name in names:
                stored = {d.source_uri: d for d in documents if d.collection == name}
                origins = dict.fromkeys(d.origin for d in stored.values())
                for origin in origins:
                    if is_re_readable(origin):
                        await self._origin(name, origin, stored, fetcher)
        return self.report

    def _stored(self, collection: str) -> dict[str, DocumentInfo]:
        return {d.source_uri: d for d in self.repository.documents(collection=collection)}

    async def _origin(
        self,
        collection: str,
        origin: str,
        stored: dict[str, DocumentInfo],
        fetcher: WebFetcher,
    ) -> None:
        before = {uri for uri, d in stored.items() if d.origin == origin}
        try:
            seen = (
                await self._web(collection, origin, stored, fetcher)
                if is_url(origin)
                else await self._local(collection, origin, stored)
            )
        except SourceGone as exc:
            self.progress.error(origin, str(exc))
            seen = set()
        except KnowledgeBaseError as exc:
            # The origin itself could not be read (a sitemap timing out): keep what is stored.
            self.progress.error(origin, str(exc))
            return
        for uri in sorted(before - seen):
            if self.repository.remove_document(collection=collection, source_uri=uri):
                self.report.removed += 1
                logger.info("kb: removed %s (gone from %s)", uri, origin)

    async def _local(
        self, collection: str, origin: str, stored: dict[str, DocumentInfo]
    ) -> set[str]:
        root = Path(origin)
        files = await asyncio.to_thread(local_files, root)
        seen: set[str] = set()
        explicit = files == [root]  # a file named on the command line, not found in a folder
        for path in files:
            uri = str(path)
            try:
                fetched = await asyncio.to_thread(read_file, path, max_bytes=self.policy.max_bytes)
            except SourceGone:
                continue
            except KnowledgeBaseError as exc:
                self.progress.error(uri, str(exc))
                seen.add(uri)
                continue
            seen.add(uri)
            await asyncio.to_thread(
                self._store, collection, origin, fetched, stored, explicit=explicit
            )
        return seen

    async def _web(
        self,
        collection: str,
        origin: str,
        stored: dict[str, DocumentInfo],
        fetcher: WebFetcher,
    ) -> set[str]:
        first = await fetcher.fetch(origin)
        if sitemap_locations(first.data) is None:
            await asyncio.to_thread(self._store, collection, origin, first, stored, explicit=True)
            return {first.source_uri}
        pages, left_out = await fetcher.sitemap_pages(first)
        if left_out:
            self.progress.error(origin, texts.KB_OTHER_HOSTS.format(count=left_out))
        seen: set[str] = set()

        async def one(url: str) -> Fetched | None:
            try:
                return await fetcher.fetch(url)
            except SourceGone as exc:
                self.progress.error(url, str(exc))
                return None
            except KnowledgeBaseError as exc:
                self.progress.error(url, str(exc))
                seen.add(url)  # failed, not gone: keep the stored copy
                return None

        for task in asyncio.as_completed([one(url) for url in pages]):
            fetched = await task
            if fetched is not None:
                seen.add(fetched.source_uri)
                await asyncio.to_thread(
                    self._store, collection, origin, fetched, stored, explicit=False
                )
        return seen

    def _store(
        self,
        collection: str,
        origin: str,
        fetched: Fetched,
        stored: dict[str, DocumentInfo],
        *,
        explicit: bool,
    ) -> None:
        fmt = format_for(fetched.name, fetched.media_type)
        if fmt is None:
            if not explicit:
                return
            fmt = Format.TEXT  # a file named on the command line: read as text if it is text
        try:
            fallback = Path(fetched.name).stem or fetched.source_uri
            document = extract(fetched.data, fmt=fmt, fallback_title=fallback)
            checksum = content_checksum(
                document.title,
                document.blocks,
                self.limits,
                embedding_model=self.embedder.model_id if self.embedder else "",
            )
            known = stored.get(fetched.source_uri)
            if known is not None and (known.checksum, known.title, known.link, known.origin) == (
                checksum,
                document.title,
                fetched.link,
                origin,
            ):
                self.report.unchanged += 1
                self.progress.document(0)
                return
            chunks = chunk_blocks(document.blocks, count=self.count, limits=self.limits)
            if not chunks:
                raise KnowledgeBaseError("no text in it")
            # On this thread, not the event loop.
            vectors = chunk_vectors(self.embedder, document.title, chunks)
            result = self.repository.add_document(
                collection=collection,
                source_uri=fetched.source_uri,
                title=document.title,
                link=fetched.link,
                checksum=checksum,
                chunks=chunks,
                origin=origin,
                vectors=vectors,
            )
        except KnowledgeBaseError as exc:
            self.progress.error(fetched.source_uri, str(exc))
            return
        if result.outcome is DocumentOutcome.ADDED:
            self.report.added += 1
        elif result.outcome is DocumentOutcome.REPLACED:
            self.report.replaced += 1
        else:
            self.report.unchanged += 1
        written = 0 if result.outcome is DocumentOutcome.UNCHANGED else result.chunks
        self.report.chunks += written
        self.progress.document(written)
