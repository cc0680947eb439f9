"""Knowledge-base ingestion end to end on SQLite and PostgreSQL: every format from files and
folders, web pages and sitemaps from a local HTTP server, sync after edits and deletions, bad
sources, and the `solarbot kb` command as a subprocess (issue 14)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bot.errors import KnowledgeBaseError
from bot.kb.chunking import ChunkLimits, TokenCounter, tokenizer_counter
from bot.kb.ingest import Ingestor, IngestProgress, IngestReport
from bot.kb.sources import FetchPolicy
from bot.knowledge import ChunkDraft
from bot.prompt_room import FileTokenizer
from storage.repository import Repository
from tests.support import processes
from tests.support.kb_support import (
    assert_ranking_statistics_exact,
    build_solar_tokenizer,
    minimal_pdf,
)

LIMITS = ChunkLimits(max_tokens=120, min_tokens=60)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_solar_tokenizer(tmp_path_factory.mktemp("solar-tokenizer"))


@pytest.fixture(scope="module")
def count(tokenizer_dir: Path) -> TokenCounter:
    return tokenizer_counter(FileTokenizer(tokenizer_dir))


@dataclass
class Run:
    repository: Repository
    count: TokenCounter
    policy: FetchPolicy = field(default_factory=lambda: FetchPolicy(timeout_seconds=5.0))
    lines: io.StringIO = field(default_factory=io.StringIO)

    def ingestor(self) -> Ingestor:
        progress = IngestProgress(bar=False, stream=self.lines)
        return Ingestor(
            self.repository, count=self.count, limits=LIMITS, policy=self.policy, progress=progress
        )

    async def add(self, *sources: str | Path, collection: str = "docs") -> IngestReport:
        return await self.ingestor().add(collection=collection, sources=[str(s) for s in sources])

    async def sync(self, collection: str | None = None) -> IngestReport:
        return await self.ingestor().sync(collection=collection)

    def errors(self) -> list[str]:
        return self.lines.getvalue().splitlines()

    def top(self, query: str, collection: str = "docs") -> str:
        hits = self.repository.search_passages(collections=[collection], query=query)
        return hits[0].link if hits else ""


@pytest.fixture
def run(repository: Repository, count: TokenCounter) -> Run:
    return Run(repository, count)


LONG = "\n\n".join(
    f"Paragraph {n} explains how the frobnicator calibrates its sprockets in detail." * 3
    for n in range(12)
)


def write_corpus(folder: Path) -> dict[str, Path]:
    nested = folder / "guides" / "deep"
    nested.mkdir(parents=True)
    files = {
        "md": folder / "refunds.md",
        "html": folder / "guides" / "shipping.html",
        "txt": nested / "warranty.txt",
        "pdf": folder / "handbook.pdf",
        "long": folder / "calibration.md",
    }
    files["md"].write_text("# Refunds\n\nRefunds are paid within fourteen days.\n")
    files["html"].write_text(
        "<html><nav>menu pelican</nav><main><h1>Shipping</h1>"
        "<p>Parcels travel by zeppelin overnight.</p></main></html>"
    )
    files["txt"].write_text("Warranty lasts thirty-six months for every toaster.\n")
    files["pdf"].write_bytes(minimal_pdf([["Holidays: employees get marmalade leave."]]))
    files["long"].write_text("# Calibration\n\n" + LONG + "\n\n```\nfrobnicate --all\n```\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # unknown type: not read
    (folder / ".hidden.md").write_text("# Hidden\n\nsecret walrus\n")
    return files


async def test_every_format_from_a_folder_is_searchable_and_re_adding_is_a_no_op(
    run: Run, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path / "kb")
    report = await run.add(tmp_path / "kb")
    assert (report.added, report.errors, run.errors()) == (5, [], [])
    assert run.top("when are refunds paid") == str(files["md"])
    assert run.top("zeppelin parcels") == str(files["html"])
    assert run.top("toaster warranty months") == str(files["txt"])
    assert run.top("marmalade leave") == str(files["pdf"])
    assert run.top("frobnicate all") == str(files["long"])
    assert run.repository.search_passages(collections=["docs"], query="pelican menu") == []
    assert run.repository.search_passages(collections=["docs"], query="walrus") == []
    calibration = next(d for d in run.repository.documents() if d.title == "Calibration")
    chunks = run.repository.chunk_texts(document_id=calibration.document_id)
    assert len(chunks) > 2 and all(c.token_count <= LIMITS.max_tokens for c in chunks)
    assert all(c.heading_path == ("Calibration",) for c in chunks)
    assert run.count([c.text for c in chunks]) == [c.token_count for c in chunks]

    again = await run.add(tmp_path / "kb")
    assert (again.added, again.replaced, again.unchanged, again.chunks) == (0, 0, 5, 0)
    [info] = run.repository.collections()
    assert (info.documents, info.chunks) == (5, sum(d.chunks for d in run.repository.documents()))


async def test_sync_replaces_edited_removes_deleted_and_finds_new_files(
    run: Run, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path / "kb")
    single = tmp_path / "single.md"
    single.write_text("# Single\n\nA lone file about walruses.\n")
    await run.add(tmp_path / "kb", single)
    files["md"].write_text("# Refunds\n\nRefunds are now paid within three days.\n")
    files["html"].unlink()
    (tmp_path / "kb" / "new.md").write_text("# New\n\nBrand new page about kiwis.\n")
    single.unlink()
    report = await run.sync()
    assert (report.added, report.replaced, report.removed, report.unchanged) == (1, 1, 2, 3)
    assert run.top("three days") == str(files["md"])
    assert run.repository.search_passages(collections=["docs"], query="fourteen") == []
    assert run.repository.search_passages(collections=["docs"], query="zeppelin") == []
    assert run.repository.search_passages(collections=["docs"], query="walruses") == []
    assert run.top("kiwis") == str(tmp_path / "kb" / "new.md")
    assert run.errors() == [f"kb: skipped {single}: {single}: no such file or folder"]
    assert_ranking_statistics_exact(run.repository.engine)


async def test_bad_sources_get_one_line_each_and_the_rest_carries_on(
    run: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nGood content about otters.\n")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (folder / "latin.md").write_bytes("# Café\n\ncrème brûlée".encode("latin-1"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (folder / "empty.md").write_text("\n\n")
    (folder / "big.txt").write_text("word " * 3000)
    run.policy = FetchPolicy(max_bytes=10_000)
    report = await run.add(folder, tmp_path / "missing.md")
    assert report.added == 1
    lines = run.errors()
    assert len(lines) == 6, lines
    reasons = "\n".join(lines)
    for expected in (
        "binary.txt: binary data",
        "latin.md: not UTF-8",
        "broken.pdf: not a readable PDF",
        "empty.md: no text in it",
        "big.txt: too large",
        "missing.md: no such file",
    ):
        assert expected in reasons
    assert run.top("otters")
    assert [d.title for d in run.repository.documents()] == ["Good"]


async def test_a_document_that_cannot_be_stored_leaves_the_stored_copy_whole(
    run: Run, tmp_path: Path
) -> None:
    doc = tmp_path / "a.md"
    doc.write_text("# A\n\nOriginal text about llamas.\n")
    await run.add(doc)
    before = run.repository.documents()
    with pytest.raises(KnowledgeBaseError):
        run.repository.add_document(
            collection="docs",
            source_uri=str(doc),
            title="A",
            link=str(doc),
            checksum="new",
            chunks=[
                ChunkDraft(position=0, heading_path=(), text="alpacas", token_count=1),
                ChunkDraft(position=1, heading_path=("bad \ud800",), text="x", token_count=1),
            ],
        )
    assert run.repository.documents() == before
    assert run.top("llamas") == str(doc)
    assert run.repository.search_passages(collections=["docs"], query="alpacas") == []


# ---------------------------------------------------------------- the web


@dataclass
class Site:
    pages: dict[str, tuple[int, str, bytes]]  # path -> (status, content type, body)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    delay: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    state = Site(pages={})

    async def handle(request: web.Request) -> web.StreamResponse:
        state.requests.append(request.path)
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            await asyncio.sleep(state.delay if request.path != "/slow" else 3.0)
        finally:
            state.in_flight -= 1
        if request.path == "/moved":
            raise web.HTTPFound("http://localhost:9/elsewhere")
        status, kind, body = state.pages.get(request.path, (404, "text/plain", b"not found"))
        return web.Response(status=status, body=body, content_type=kind.split(";")[0])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def page(title: str, body: str) -> tuple[int, str, bytes]:
    html = (
        f"<html><head><title>{title}</title><script>tracking()</script></head><body>"
        f"<nav>nav links</nav><h1>{title}</h1><p>{body}</p><footer>foot</footer></body></html>"
    )
    return 200, "text/html", html.encode()


def sitemap(urls: list[str]) -> tuple[int, str, bytes]:
    entries = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
    )
    return 200, "application/xml", body.encode()


async def test_pages_and_sitemaps_from_a_local_server_then_sync(run: Run, site: Site) -> None:
    base = site.url
    site.pages.update(
        {
            "/faq.html": page("FAQ", "Our opening hours are nine to five."),
            "/pricing": page("Pricing", "The basic plan costs twelve doubloons."),
            "/manual.md": (200, "text/markdown", b"# Manual\n\nPress the glowing button.\n"),
            "/guide.pdf": (200, "application/pdf", minimal_pdf([["Volcano safety rules."]])),
            "/broken": (500, "text/plain", b"oops"),
            "/huge": (200, "text/html", b"<p>" + b"x" * 70_000 + b"</p>"),
        }
    )
    urls = [
        f"{base}/pricing",
        f"{base}/manual.md",
        f"{base}/guide.pdf#top",
        f"{base}/gone",
        f"{base}/broken",
        f"{base}/huge",
        f"{base}/moved",
        "http://elsewhere.example/page",
    ]
    site.pages["/sitemap.xml"] = sitemap(urls)
    run.policy = FetchPolicy(timeout_seconds=5.0, max_bytes=60_000)
    report = await run.add(f"{base}/faq.html", f"{base}/sitemap.xml")
    assert report.added == 4, run.errors()
    assert run.top("opening hours") == f"{base}/faq.html"
    assert run.top("basic plan doubloons") == f"{base}/pricing"
    assert run.top("glowing button") == f"{base}/manual.md"
    assert run.top("volcano safety") == f"{base}/guide.pdf"
    assert run.repository.search_passages(collections=["docs"], query="tracking nav foot") == []
    assert "/page" not in site.requests  # another host: never fetched
    reasons = "\n".join(run.errors())
    assert f"{base}/gone: HTTP 404" in reasons
    assert f"{base}/broken: HTTP 500" in reasons
    assert f"{base}/huge: too large" in reasons
    assert f"{base}/moved: redirected to another host" in reasons
    assert f"{base}/sitemap.xml: 1 sitemap entries on other hosts left out" in reasons
    assert len(run.errors()) == 5

    # Edit one page, make one vanish (404), one fail (500: its stored copy stays), drop one
    # from the sitemap.
    site.pages["/pricing"] = page("Pricing", "The basic plan now costs nine doubloons.")
    del site.pages["/manual.md"]
    site.pages["/faq.html"] = (503, "text/plain", b"busy")
    site.pages["/sitemap.xml"] = sitemap([f"{base}/pricing", f"{base}/manual.md"])
    run.lines = io.StringIO()
    report = await run.sync()
    assert (report.replaced, report.removed) == (1, 2), run.errors()
    assert run.top("nine doubloons") == f"{base}/pricing"
    assert run.repository.search_passages(collections=["docs"], query="glowing button") == []
    assert run.repository.search_passages(collections=["docs"], query="volcano") == []
    assert run.top("opening hours") == f"{base}/faq.html"  # a 503 is not "gone"


async def test_sitemaps_can_follow_other_hosts_when_told(run: Run, site: Site) -> None:
    site.pages["/sitemap.xml"] = sitemap([f"{site.url.replace('127.0.0.1', 'localhost')}/a"])
    site.pages["/a"] = page("A", "Alpha page about quokkas.")
    await run.add(f"{site.url}/sitemap.xml")
    assert run.repository.documents() == []
    assert "other hosts left out" in run.errors()[0]
    run.policy = FetchPolicy(any_host=True, timeout_seconds=5.0)
    report = await run.add(f"{site.url}/sitemap.xml")
    assert report.added == 1 and run.top("quokkas")


async def test_fetching_is_polite_few_at_once_and_never_waits_forever(run: Run, site: Site) -> None:
    site.delay = 0.05
    for n in range(12):
        site.pages[f"/p{n}"] = page(f"P{n}", f"Page number {n} about capybaras.")
    site.pages["/sitemap.xml"] = sitemap(
        [f"{site.url}/p{n}" for n in range(12)] + [f"{site.url}/slow"]
    )
    run.policy = FetchPolicy(concurrency=3, timeout_seconds=1.0)
    report = await run.add(f"{site.url}/sitemap.xml")
    assert report.added == 12
    assert 2 <= site.most_in_flight <= 3
    assert run.errors() == [f"kb: skipped {site.url}/slow: timed out after 1 s"]


# ---------------------------------------------------------------- the command


def test_the_kb_command_adds_lists_searches_and_removes(
    database_url: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    files = write_corpus(tmp_path / "kb")
    env = {"SOLARBOT_DATABASE_URL": database_url, "SOLARBOT_MODEL": str(tokenizer_dir)}
    added = processes.solarbot(
        "kb", "add", "--collection", "support", str(tmp_path / "kb"), env=env
    )
    assert added.returncode == 0, added.stderr
    assert "5 added" in added.stdout
    again = processes.solarbot(
        "kb", "add", "--collection", "support", str(tmp_path / "kb"), env=env
    )
    assert "0 added, 0 replaced, 5 unchanged" in again.stdout
    files["md"].write_text("# Refunds\n\nRefunds are paid within two days.\n")
    files["txt"].unlink()
    synced = processes.solarbot("kb", "sync", "--collection", "support", env=env)
    assert synced.returncode == 0, synced.stderr
    assert "0 added, 1 replaced, 3 unchanged, 1 removed" in synced.stdout
    files["txt"].write_text("Warranty lasts thirty-six months for every toaster.\n")
    assert "1 added" in processes.solarbot("kb", "sync", env=env).stdout

    listed = processes.solarbot("kb", "list", env=env)
    assert listed.stdout.startswith("support\t5 document(s)")
    searched = processes.solarbot("kb", "search", "--json", "--limit", "2", "zeppelin?", env=env)
    assert searched.returncode == 0, searched.stderr
    hits = [json.loads(line) for line in searched.stdout.splitlines()]
    assert len(hits) <= 2 and hits[0]["link"] == str(files["html"])
    assert hits[0]["heading_path"] == ["Shipping"] and hits[0]["title"] == "Shipping"
    assert hits[0]["score"] >= hits[-1]["score"]
    text = processes.solarbot("kb", "search", '"NEAR(*:) OR', env=env)
    assert text.returncode == 0
    plain = processes.solarbot("kb", "search", "--collection", "support", "refunds", env=env)
    assert "1. Refunds [support]" in plain.stdout and str(files["md"]) in plain.stdout

    removed = processes.solarbot("kb", "rm", "--collection", "support", str(files["md"]), env=env)
    assert removed.returncode == 0 and "removed" in removed.stdout
    gone = processes.solarbot("kb", "rm", "--collection", "support", str(files["md"]), env=env)
    assert gone.returncode == 1
    dropped = processes.solarbot("kb", "rm", "--collection", "support", "--all", env=env)
    assert "4 document(s)" in dropped.stdout
    assert "no collections" in processes.solarbot("kb", "list", env=env).stdout


def test_a_bad_source_on_the_command_line_fails_the_exit_status_not_the_run(
    sqlite_url: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.md"
    good.write_text("# Good\n\nfine\n")
    env = {"SOLARBOT_DATABASE_URL": sqlite_url, "SOLARBOT_MODEL": str(tokenizer_dir)}
    result = processes.solarbot("kb", "add", str(tmp_path / "nope.pdf"), str(good), env=env)
    assert result.returncode == 1
    assert "1 added" in result.stdout
    assert result.stderr.count("kb: skipped") == 1 and "nope.pdf" in result.stderr


def test_no_tokenizer_is_one_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    env = {
        "SOLARBOT_DATABASE_URL": sqlite_url,
        "SOLARBOT_MODEL": str(tmp_path / "no-model"),
        "SOLARBOT_OFFLINE": "true",
        "HF_HUB_OFFLINE": "1",
    }
    result = processes.solarbot("kb", "add", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "cannot load the tokenizer of SOLARBOT_MODEL" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_terminal_gets_a_bar_with_documents_chunks_and_errors(
    repository: Repository, count: TokenCounter, tmp_path: Path
) -> None:
    (tmp_path / "a.md").write_text("# A\n\nSome text about herons.\n")
    (tmp_path / "b.txt").write_bytes(b"\x00binary")
    screen = io.StringIO()
    with IngestProgress(bar=True, stream=screen) as progress:
        ingestor = Ingestor(
            repository, count=count, limits=LIMITS, policy=FetchPolicy(), progress=progress
        )
        await ingestor.add(collection="docs", sources=[str(tmp_path)])
    drawn = screen.getvalue()
    assert "kb: skipped" in drawn and "b.txt: binary data" in drawn
    assert "1doc" in drawn.replace(" ", "") and "chunks=1" in drawn and "errors=1" in drawn
    assert (progress.documents, progress.chunks, progress.errors) == (1, 1, 1)
