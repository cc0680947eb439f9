"""Knowledge-base search: ingestion speed, database size, query latency and retrieval quality.

Corpus: the Python 3.11 documentation as Debian ships it (``apt-get install python3.11-doc``;
HTML under /usr/share/doc/python3.11/html; run as root, the bench installs it when missing). Every
HTML page is ingested except the generated index pages (genindex*, py-modindex, search), which
are lists of links, not documentation. Questions: bench/kb_questions.json, phrased the way users
ask, each with the page(s) that answer it.

One run reports:
- ingestion into a fresh SQLite file through the real pipeline (read, extract, chunk with
  SOLAR's tokenizer, store): wall time, chunks/s, database size;
- the same chunks copied into PostgreSQL (``--database-url``), with its table size;
- query latency p50/p95 of ``Repository.search_passages`` (storage/repository/kb_ranking.py:
  BM25, document evidence, each document's best passage first) on each database (every question,
  ``--rounds`` times after one warm-up round);
- recall@5 (a page that answers is among the first five passages returned) and MRR@10 (the
  reciprocal rank of the first passage from such a page among ten) of our search, against
  an in-memory Okapi BM25 baseline (k1 1.2, b 0.75, words lower-cased, no stemming) over the same
  chunks (title, headings and text) in the same run.

- with ``--embeddings FOLDER`` (default SOLARBOT_KB_EMBEDDINGS), a hybrid row: a second SQLite
  database ingested with the chunks' vectors, searched with keyword and vector ranks fused (else
  one line saying that no model was given).

Ends with one line:
``kb: N chunks, recall@5 R, mrr@10 M, p95 X ms (sqlite), p95 Y ms (postgresql)``
(``n/a`` for PostgreSQL without ``--database-url``).

Tokenizer: ``--model`` (a local model folder; default SOLARBOT_MODEL when that is a folder),
else SOLAR's tokenizer files are written from the copy mistral_common ships (no download).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import percentile
from bot.answering import retrieve
from bot.kb.chunking import ChunkLimits, tokenizer_counter
from bot.kb.embeddings import Embedder
from bot.kb.ingest import Ingestor, IngestProgress
from bot.kb.sources import FetchPolicy
from bot.prompt_room import FileTokenizer
from storage import database
from storage.repository import Repository
from storage.repository.kb_ranking import CANDIDATES

CORPUS = Path("/usr/share/doc/python3.11/html")
QUESTIONS = Path(__file__).with_name("kb_questions.json")
COLLECTION = "python"
INDEX_PAGES = re.compile(r"^(genindex.*|py-modindex|search)\.html$")
_WORD = re.compile(r"\w+")


def ensure_corpus(corpus: Path) -> None:
    if corpus.is_dir():
        return
    if corpus == CORPUS and os.geteuid() == 0 and shutil.which("apt-get"):
        print("kb: installing python3.11-doc (apt-get install -y python3.11-doc)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "python3.11-doc"], check=False)
        if corpus.is_dir():
            return
    sys.exit(
        f"kb: no corpus at {corpus}. Install it with `sudo apt-get install python3.11-doc` "
        "(Debian/Ubuntu), or pass --corpus FOLDER."
    )


def corpus_files(corpus: Path) -> list[Path]:
    return sorted(
        path
        for path in corpus.rglob("*.html")
        if not INDEX_PAGES.match(path.name) and "_sources" not in path.parts
    )


def tokenizer_folder(model: str | None, scratch: Path) -> Path:
    if model:
        return Path(model)
    configured = os.environ.get("SOLARBOT_MODEL", "")
    if configured and Path(configured, "tokenizer.json").is_file():
        return Path(configured)
    from tests.support.kb_support import build_solar_tokenizer

    return build_solar_tokenizer(scratch / "solar-tokenizer")


@dataclass
class Scores:
    recall_at_5: float
    mrr_at_10: float


def relevance(ranked_links: Sequence[Sequence[str]], questions: list[dict], corpus: Path) -> Scores:
    hits5 = 0
    reciprocal = 0.0
    for links, question in zip(ranked_links, questions, strict=True):
        wanted = {str(corpus / page) for page in question["pages"]}
        ranks = [rank for rank, link in enumerate(links[:10], start=1) if link in wanted]
        if ranks and ranks[0] <= 5:
            hits5 += 1
        if ranks:
            reciprocal += 1 / ranks[0]
    return Scores(hits5 / len(questions), reciprocal / len(questions))


class BM25:
    """Okapi BM25 over token lists, in memory (the baseline)."""

    def __init__(self, documents: list[list[str]], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.lengths = [len(doc) for doc in documents]
        self.average = sum(self.lengths) / max(1, len(documents))
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for index, doc in enumerate(documents):
            for term, freq in Counter(doc).items():
                self.postings.setdefault(term, []).append((index, freq))
        n = len(documents)
        self.idf = {
            term: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5))
            for term, p in self.postings.items()
        }

    def top(self, query: list[str], k: int) -> list[int]:
        scores: Counter[int] = Counter()
        for term in set(query):
            for index, freq in self.postings.get(term, ()):
                norm = self.k1 * (1 - self.b + self.b * self.lengths[index] / self.average)
                scores[index] += self.idf[term] * freq * (self.k1 + 1) / (freq + norm)
        return [index for index, _ in scores.most_common(k)]


def best_passage_per_page(links: list[str]) -> list[str]:
    """The baseline's ranking with each page's best passage first, as our search orders its
    hits (without its document evidence): how much of our gain that ordering alone explains."""
    seen: set[str] = set()
    firsts, rest = [], []
    for link in links:
        (rest if link in seen else firsts).append(link)
        seen.add(link)
    return firsts + rest


def words(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text)]


def search_all(
    repository: Repository, questions: list[dict], rounds: int, embedder: Embedder | None = None
) -> tuple[list[list[str]], list[float]]:
    """Every question searched as the bot does (``answering.retrieve``; with ``embedder``:
    hybrid, the question's embedding included in the time)."""

    def search(question: dict) -> list[str]:
        hits = retrieve(
            repository,
            collections=[COLLECTION],
            newest=question["question"],
            previous=None,
            limit=10,
            embedder=embedder,
        )
        return [hit.link for hit in hits]

    ranked = [search(question) for question in questions]  # warm-up round, and the ranking
    latencies: list[float] = []
    for _ in range(rounds):
        for question in questions:
            began = time.perf_counter()
            search(question)
            latencies.append((time.perf_counter() - began) * 1000)
    return ranked, latencies


def hybrid_row(
    args: argparse.Namespace, files: list[Path], questions: list[dict], **ingest: Any
) -> str:
    """The hybrid line: a second SQLite database ingested with ``--embeddings`` (the chunks'
    vectors included in the ingestion time), searched with keyword and vector ranks fused."""
    if args.embeddings is None:
        return (
            "hybrid: no embedding model given (set SOLARBOT_KB_EMBEDDINGS or pass --embeddings "
            "FOLDER, a local sentence-embedding model)"
        )
    embedder = Embedder(args.embeddings)
    repository = Repository.open(f"sqlite:///{ingest.pop('scratch') / 'hybrid.db'}")
    began = time.perf_counter()
    with IngestProgress(bar=False, stream=io.StringIO()) as progress:
        ingestor = Ingestor(repository, progress=progress, embedder=embedder, **ingest)
        report = asyncio.run(ingestor.add(collection=COLLECTION, sources=[str(f) for f in files]))
    ingest_s = time.perf_counter() - began
    ranked, latencies = search_all(repository, questions, args.rounds, embedder)
    scores = relevance(ranked, questions, args.corpus)
    repository.close()
    return (
        f"hybrid (sqlite, {embedder.model_id}, reciprocal rank fusion): {report.chunks} chunks "
        f"with vectors in {ingest_s:.1f} s; recall@5 {scores.recall_at_5:.3f}, mrr@10 "
        f"{scores.mrr_at_10:.3f}, p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p95 {percentile(latencies, 0.95):.1f} ms"
    )


def copy_chunks(source: Repository, target: Repository) -> int:
    copied = 0
    for document in source.documents(collection=COLLECTION):
        chunks = source.chunk_texts(document_id=document.document_id)
        target.add_document(
            collection=COLLECTION,
            source_uri=document.source_uri,
            title=document.title,
            link=document.link,
            checksum=document.checksum,
            chunks=chunks,
            origin=document.origin,
        )
        copied += len(chunks)
    return copied


def postgres_size(repository: Repository) -> int:
    with repository.engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT pg_total_relation_size('kb_chunks') + pg_total_relation_size('kb_documents')"
                " + pg_total_relation_size('kb_terms')"
            ).scalar_one()
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument(
        "--database-url", help="a PostgreSQL database to measure too (its kb tables are emptied)"
    )
    parser.add_argument("--model", help="a model folder whose tokenizer counts the chunks")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over the questions")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--min-tokens", type=int, default=200)
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=Path(os.environ["SOLARBOT_KB_EMBEDDINGS"])
        if os.environ.get("SOLARBOT_KB_EMBEDDINGS")
        else None,
        help="a local sentence-embedding model folder: adds a hybrid row "
        "(default SOLARBOT_KB_EMBEDDINGS)",
    )
    args = parser.parse_args()

    ensure_corpus(args.corpus)
    questions = json.loads(args.questions.read_text(encoding="utf-8"))
    files = corpus_files(args.corpus)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        count = tokenizer_counter(FileTokenizer(tokenizer_folder(args.model, scratch)))
        db_file = scratch / "kb.db"
        sqlite = Repository.open(f"sqlite:///{db_file}")
        limits = ChunkLimits(max_tokens=args.max_tokens, min_tokens=args.min_tokens)
        errors = io.StringIO()
        began = time.perf_counter()
        with IngestProgress(bar=False, stream=errors) as progress:
            ingestor = Ingestor(
                sqlite, count=count, limits=limits, policy=FetchPolicy(), progress=progress
            )
            report = asyncio.run(
                ingestor.add(collection=COLLECTION, sources=[str(f) for f in files])
            )
        ingest_s = time.perf_counter() - began
        chunks = report.chunks
        db_bytes = sum(p.stat().st_size for p in scratch.glob("kb.db*"))
        print(f"corpus: {len(files)} pages from {args.corpus}; {len(questions)} questions")
        print(
            f"ingestion (sqlite): {report.added} documents, {chunks} chunks in {ingest_s:.1f} s "
            f"({chunks / ingest_s:.0f} chunks/s), {progress.errors} error(s); "
            f"database {db_bytes / 1e6:.1f} MB"
        )
        for line in errors.getvalue().splitlines()[:5]:
            print(f"  {line}")

        ranked, latencies = search_all(sqlite, questions, args.rounds)
        ours = relevance(ranked, questions, args.corpus)
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        print(
            f"search (sqlite fts5 bm25): recall@5 {ours.recall_at_5:.3f}, mrr@10 {ours.mrr_at_10:.3f}, p50 {p50:.1f} ms, p95 {p95:.1f} ms"
        )

        rows = []
        for document in sqlite.documents(collection=COLLECTION):
            for chunk in sqlite.chunk_texts(document_id=document.document_id):
                rows.append(
                    (
                        document.link,
                        words(" ".join([document.title, *chunk.heading_path, chunk.text])),
                    )
                )
        baseline = BM25([tokens for _, tokens in rows])
        base_ranked = []
        diverse_ranked = []
        base_latencies = []
        for question in questions:
            began = time.perf_counter()
            top = baseline.top(words(question["question"]), CANDIDATES)
            base_latencies.append((time.perf_counter() - began) * 1000)
            base_ranked.append([rows[i][0] for i in top[:10]])
            diverse_ranked.append(best_passage_per_page([rows[i][0] for i in top])[:10])
        base = relevance(base_ranked, questions, args.corpus)
        diverse = relevance(diverse_ranked, questions, args.corpus)
        print(
            f"baseline (in-memory Okapi BM25, same chunks): recall@5 {base.recall_at_5:.3f}, "
            f"mrr@10 {base.mrr_at_10:.3f}, p95 {percentile(base_latencies, 0.95):.1f} ms; "
            f"with each page's best passage first: recall@5 {diverse.recall_at_5:.3f}, "
            f"mrr@10 {diverse.mrr_at_10:.3f}"
        )

        pg_p95 = "n/a"
        if args.database_url:
            engine = database.create_db_engine(args.database_url)
            database.upgrade(engine)
            postgres = Repository(engine)
            postgres.remove_collection(collection=COLLECTION)
            began = time.perf_counter()
            copied = copy_chunks(sqlite, postgres)
            copy_s = time.perf_counter() - began
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("VACUUM ANALYZE kb_collections, kb_documents, kb_chunks")
            pg_ranked, pg_latencies = search_all(postgres, questions, args.rounds)
            pg = relevance(pg_ranked, questions, args.corpus)
            pg_p50, pg_p95_value = percentile(pg_latencies, 0.5), percentile(pg_latencies, 0.95)
            pg_p95 = f"{pg_p95_value:.1f} ms"
            print(
                f"postgresql: {copied} chunks copied in {copy_s:.1f} s, tables "
                f"{postgres_size(postgres) / 1e6:.1f} MB; search (GIN candidates, BM25 from kb_terms): "
                f"recall@5 {pg.recall_at_5:.3f}, mrr@10 {pg.mrr_at_10:.3f}, "
                f"p50 {pg_p50:.1f} ms, p95 {pg_p95}"
            )
            postgres.close()
        print(
            hybrid_row(
                args,
                files,
                questions,
                scratch=scratch,
                count=count,
                limits=limits,
                policy=FetchPolicy(),
            )
        )
        missed = [
            q["question"]
            for q, links in zip(questions, ranked, strict=True)
            if not set(links[:5]) & {str(args.corpus / p) for p in q["pages"]}
        ]
        for question in missed:
            print(f"  missed@5 (sqlite): {question}")
        sqlite.close()
    print(
        f"kb: {chunks} chunks, recall@5 {ours.recall_at_5:.2f}, mrr@10 {ours.mrr_at_10:.2f}, "
        f"p95 {p95:.1f} ms (sqlite), p95 {pg_p95} (postgresql)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
