"""``solarbot kb``: the knowledge base from the command line (docs/knowledge-base.md).

- ``solarbot kb add [--collection NAME] [--any-host] SOURCE...``: Markdown, HTML, plain-text and
  PDF files, folders (recursive), ``http(s)://`` pages and sitemaps;
- ``solarbot kb sync [--collection NAME] [--any-host]``: read every source again (unchanged ones
  skipped, changed ones replaced, vanished ones removed);
- ``solarbot kb list [--collection NAME]``: the collections, or one collection's documents;
- ``solarbot kb rm [--collection NAME] (SOURCE... | --all)``: remove documents or a collection;
- ``solarbot kb search [--collection NAME]... [--limit K] [--json] QUERY...``: the ranked
  chunks with title, link or path, heading path and score (``--json``: one object a line).

Chunks are counted with the tokenizer of ``SOLARBOT_MODEL``, loaded from its files alone (no
torch, no model weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from bot import texts
from bot.errors import KnowledgeBaseError
from bot.settings import Settings
from bot.tools.arguments import positive_int

if TYPE_CHECKING:
    from bot.kb.chunking import TokenCounter
    from storage.repository import Repository


def add_kb_parser(commands: Any) -> None:
    """Add ``kb`` and its actions to the ``solarbot`` sub-command parsers."""
    kb = commands.add_parser(
        "kb",
        help="the knowledge base: add, sync, list, remove and search documents",
        description="Manage the knowledge base the bot answers from (docs/knowledge-base.md).",
    )
    actions = kb.add_subparsers(dest="kb_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="add files, folders, web pages or sitemaps to a collection",
        description="Add Markdown, HTML, text and PDF files, folders (recursive), http(s) "
        "pages and sitemap.xml files. Unchanged sources are skipped; a source that cannot "
        "be read gets one line and the rest carry on.",
    )
    _collection(add)
    _any_host(add)
    add.add_argument("sources", nargs="+", metavar="SOURCE", help="file, folder or URL")
    sync = actions.add_parser(
        "sync",
        help="read every source again: changed replaced, vanished removed",
        description="Read every stored source again (of one collection, or all): unchanged "
        "documents are skipped, changed ones replaced, vanished ones removed.",
    )
    sync.add_argument("--collection", help="only this collection (default: all)")
    _any_host(sync)
    listing = actions.add_parser(
        "list", help="the collections, or one collection's documents", description="List."
    )
    listing.add_argument("--collection", help="list this collection's documents")
    rm = actions.add_parser(
        "rm",
        help="remove documents (by source) or a whole collection (--all)",
        description="Remove documents by their source (path or URL as listed), or --all.",
    )
    _collection(rm)
    what = rm.add_mutually_exclusive_group(required=True)
    what.add_argument("sources", nargs="*", default=[], metavar="SOURCE")
    what.add_argument("--all", action="store_true", help="remove the whole collection")
    search = actions.add_parser(
        "search",
        help="search the knowledge base",
        description="Print the best-matching chunks with title, link or path, heading path "
        "and score.",
    )
    search.add_argument(
        "--collection",
        action="append",
        help="search this collection (repeat for several; default: every collection)",
    )
    search.add_argument("--limit", type=positive_int, default=5, help="how many chunks (default 5)")
    search.add_argument("--json", action="store_true", help="one JSON object per hit")
    search.add_argument("query", nargs="+", metavar="QUERY")


def _collection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection", help="the collection (default: SOLARBOT_KB_COLLECTION, 'default')"
    )


def _any_host(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--any-host",
        action="store_true",
        help="follow sitemap entries and redirects to other hosts (default: same host only)",
    )


def run_kb_command(settings: Settings, args: argparse.Namespace) -> int:
    from storage.repository import Repository

    repository = Repository.open(settings.resolved_database_url())
    try:
        action = args.kb_command
        if action in ("add", "sync"):
            return _ingest(settings, repository, args)
        if action == "list":
            return _list(repository, args.collection)
        if action == "rm":
            return _remove(repository, args.collection or settings.kb_collection, args)
        return _search(settings, repository, args)
    finally:
        repository.close()


def token_counter(settings: Settings) -> TokenCounter:
    """Counts tokens with SOLARBOT_MODEL's tokenizer, loaded from its files alone."""
    from bot.kb.chunking import tokenizer_counter
    from bot.prompt_room import load_tokenizer

    try:
        tokenizer, _ = load_tokenizer(settings.model, offline=settings.offline, context_window=None)
    except Exception as exc:  # huggingface_hub and tokenizers raise many kinds
        raise KnowledgeBaseError(
            texts.KB_TOKENIZER_MISSING.format(model=settings.model, reason=type(exc).__name__)
        ) from None
    return tokenizer_counter(tokenizer)


def _ingest(settings: Settings, repository: Repository, args: argparse.Namespace) -> int:
    from bot.kb.chunking import ChunkLimits
    from bot.kb.embeddings import load_embedder
    from bot.kb.ingest import Ingestor, IngestProgress
    from bot.kb.sources import FetchPolicy

    policy = FetchPolicy(
        concurrency=settings.kb_fetch_concurrency,
        timeout_seconds=settings.kb_fetch_timeout_seconds,
        max_bytes=settings.kb_max_source_bytes,
        any_host=args.any_host,
    )
    limits = ChunkLimits(
        max_tokens=settings.kb_chunk_max_tokens, min_tokens=settings.kb_chunk_min_tokens
    )
    count = token_counter(settings)
    with IngestProgress() as progress:
        ingestor = Ingestor(
            repository,
            count=count,
            limits=limits,
            policy=policy,
            progress=progress,
            embedder=load_embedder(settings.kb_embeddings),
        )
        if args.kb_command == "add":
            collection = args.collection or settings.kb_collection
            report = asyncio.run(ingestor.add(collection=collection, sources=args.sources))
        else:
            collection = args.collection or "*"
            report = asyncio.run(ingestor.sync(collection=args.collection))
    print(
        texts.KB_ADDED.format(
            collection=collection,
            added=report.added,
            replaced=report.replaced,
            unchanged=report.unchanged,
            removed=report.removed,
            chunks=report.chunks,
            errors=progress.errors,
        )
    )
    return 1 if progress.errors else 0


def _list(repository: Repository, collection: str | None) -> int:
    if collection is None:
        infos = repository.collections()
        if not infos:
            print(texts.KB_NO_COLLECTIONS)
        for info in infos:
            updated = info.updated_at.isoformat(timespec="seconds") if info.updated_at else "-"
            print(f"{info.name}\t{info.documents} document(s)\t{info.chunks} chunk(s)\t{updated}")
        return 0
    if collection not in {info.name for info in repository.collections()}:
        print(texts.KB_NO_SUCH_COLLECTION.format(collection=collection), file=sys.stderr)
        return 1
    for document in repository.documents(collection=collection):
        print(f"{document.source_uri}\t{document.chunks} chunk(s)\t{document.title}")
    return 0


def _remove(repository: Repository, collection: str, args: argparse.Namespace) -> int:
    if args.all:
        count = repository.remove_collection(collection=collection)
        if count is None:
            print(texts.KB_NO_SUCH_COLLECTION.format(collection=collection), file=sys.stderr)
            return 1
        print(texts.KB_REMOVED_COLLECTION.format(collection=collection, documents=count))
        return 0
    from bot.kb.sources import is_url, resolve_local

    missing = 0
    for source in args.sources:
        uri = source
        removed = repository.remove_document(collection=collection, source_uri=uri)
        if not removed and not is_url(source):
            uri = str(resolve_local(source))
            removed = repository.remove_document(collection=collection, source_uri=uri)
        if removed:
            print(texts.KB_REMOVED_DOCUMENT.format(source=uri, collection=collection))
        else:
            missing += 1
            print(texts.KB_NOT_STORED.format(source=source, collection=collection), file=sys.stderr)
    return 1 if missing else 0


def _search(settings: Settings, repository: Repository, args: argparse.Namespace) -> int:
    from bot.answering import retrieve
    from bot.kb.embeddings import load_embedder

    collections = args.collection or [info.name for info in repository.collections()]
    hits = retrieve(  # as the bot retrieves: hybrid when SOLARBOT_KB_EMBEDDINGS is set
        repository,
        collections=collections,
        newest=" ".join(args.query),
        previous=None,
        limit=args.limit,
        embedder=load_embedder(settings.kb_embeddings),
    )
    if not hits and not args.json:
        print(texts.KB_NO_HITS, file=sys.stderr)
    for rank, hit in enumerate(hits, start=1):
        if args.json:
            record = {
                "rank": rank,
                "score": hit.score,
                "collection": hit.collection,
                "title": hit.title,
                "link": hit.link,
                "heading_path": list(hit.heading_path),
                "chunk_id": hit.chunk_id,
                "document_id": hit.document_id,
                "token_count": hit.token_count,
                "text": hit.text,
            }
            print(json.dumps(record, ensure_ascii=False))
            continue
        where = " › ".join(hit.heading_path) or "-"
        print(f"{rank}. {hit.title} [{hit.collection}] score {hit.score:.4f}")
        print(f"   {hit.link}")
        print(f"   {where}")
        excerpt = " ".join(hit.text.split())
        print(f"   {excerpt[:300]}{'…' if len(excerpt) > 300 else ''}")
    return 0
