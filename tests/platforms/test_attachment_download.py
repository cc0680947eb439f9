"""Downloading attached files (adapters/attachment_download.py) from a real HTTP server on
127.0.0.1: size limits (declared, Content-Length, and while reading a body that never ends),
timeouts, refused connections and HTTP errors, the bearer token only ever sent to the platform's
file host (redirects included), and the concurrency limit."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from adapters.attachment_download import (
    AttachmentOptions,
    AttachmentReader,
    FileRef,
    origin_of,
    slack_file_origins,
)
from bot.attachments import MAX_FILES
from bot.records import AttachmentProblem
from tests.support.attachment_files import LoopbackFiles, endless, make_pdf

TOKEN = "xoxb-secret-token"


@pytest.fixture
async def files() -> AsyncIterator[LoopbackFiles]:
    server = LoopbackFiles()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def other() -> AsyncIterator[LoopbackFiles]:
    """A second host (another port: another origin)."""
    server = LoopbackFiles()
    await server.start()
    yield server
    await server.stop()


def reader(files: LoopbackFiles, *, max_bytes: int = 1000) -> AttachmentReader:
    """Slack's way: the token for the server's origin, as if it were Slack's API and file host."""
    return AttachmentReader(
        options=AttachmentOptions(max_bytes=max_bytes, timeout_seconds=2.0),
        bearer=TOKEN,
        auth_origins=slack_file_origins(files.base + "/api/"),
    )


async def test_text_and_pdf_files_are_downloaded_with_the_token_and_read(
    files: LoopbackFiles,
) -> None:
    pdf = make_pdf([["Hello from a PDF"]])
    text_url = files.serve("/files-pri/T-F1/notes.md", b"# Notes\n\nport 8080\n")
    pdf_url = files.serve("/files-pri/T-F2/guide.pdf", pdf, content_type="application/pdf")
    files_reader = reader(files, max_bytes=len(pdf))
    try:
        notes, guide = await files_reader.read_all(
            [
                FileRef(name="notes.md", url=text_url, media_type="text/markdown"),
                FileRef(name="guide.pdf", url=pdf_url, media_type="application/pdf"),
            ]
        )
    finally:
        await files_reader.close()
    assert (notes.problem, notes.text) == (None, "# Notes\n\nport 8080\n")
    assert guide.problem is None and "Hello from a PDF" in guide.text
    assert [headers.get("Authorization") for _, headers in files.requests] == [
        f"Bearer {TOKEN}"
    ] * 2
    assert all(headers.get("Accept-Encoding") == "identity" for _, headers in files.requests)


async def test_too_big_by_declaration_by_content_length_or_while_reading(
    files: LoopbackFiles,
) -> None:
    big = files.serve("/big.txt", b"x" * 1001)
    exact = files.serve("/exact.txt", b"y" * 1000)
    files.route("/endless.txt", endless)
    files_reader = reader(files)
    started = time.monotonic()
    try:
        declared, by_length, endless_file, fits = await files_reader.read_all(
            [
                FileRef(name="declared.txt", url=big, size=5000),
                FileRef(name="big.txt", url=big, size=10),  # the declared size lies
                FileRef(name="endless.txt", url=files.base + "/endless.txt"),
                FileRef(name="exact.txt", url=exact),
            ]
        )
    finally:
        await files_reader.close()
    assert time.monotonic() - started < 2.0  # the endless body was abandoned at once
    assert declared.problem is AttachmentProblem.TOO_BIG
    assert by_length.problem is AttachmentProblem.TOO_BIG
    assert endless_file.problem is AttachmentProblem.TOO_BIG
    assert (fits.problem, fits.text) == (None, "y" * 1000)
    # The file declared too big was never asked for.
    assert [path for path, _ in files.requests].count("/big.txt") == 1


async def test_failed_downloads_are_said_and_never_raise(files: LoopbackFiles) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="oops")

    files.route("/slow.txt", slow)
    files.route("/broken.txt", broken)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{closed.getsockname()[1]}/x.txt"
    files_reader = AttachmentReader(options=AttachmentOptions(timeout_seconds=0.3))
    started = time.monotonic()
    try:
        results = await files_reader.read_all(
            [
                FileRef(name="missing.txt", url=files.base + "/missing.txt"),
                FileRef(name="slow.txt", url=files.base + "/slow.txt"),
                FileRef(name="broken.txt", url=files.base + "/broken.txt"),
                FileRef(name="refused.txt", url=refused),
                FileRef(name="ftp.txt", url="ftp://127.0.0.1/x.txt"),
                FileRef(name="nothing.txt", url=""),
            ]
        )
    finally:
        await files_reader.close()
    assert time.monotonic() - started < 2.0
    assert [r.problem for r in results] == [AttachmentProblem.DOWNLOAD_FAILED] * 6
    assert [r.name for r in results] == [
        "missing.txt",
        "slow.txt",
        "broken.txt",
        "refused.txt",
        "ftp.txt",
        "nothing.txt",
    ]


async def test_the_token_goes_to_the_file_host_only(
    files: LoopbackFiles, other: LoopbackFiles
) -> None:
    other.serve("/stolen.txt", b"you sent me the token")

    async def away(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(other.base + "/stolen.txt")

    async def home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/files-pri/T-F9/real.txt")

    files.route("/files-pri/T-F1/away.txt", away)
    files.route("/files-pri/T-F2/home.txt", home)
    files.serve("/files-pri/T-F9/real.txt", b"the real file")
    files_reader = reader(files)
    try:
        elsewhere, redirected, followed = await files_reader.read_all(
            [
                FileRef(name="stolen.txt", url=other.base + "/stolen.txt"),
                FileRef(name="away.txt", url=files.base + "/files-pri/T-F1/away.txt"),
                FileRef(name="home.txt", url=files.base + "/files-pri/T-F2/home.txt"),
            ]
        )
    finally:
        await files_reader.close()
    assert elsewhere.problem is AttachmentProblem.DOWNLOAD_FAILED
    assert redirected.problem is AttachmentProblem.DOWNLOAD_FAILED
    assert (followed.problem, followed.text) == (None, "the real file")
    assert other.requests == []  # never asked, with the token or without
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, h in files.requests)


async def test_a_sign_in_page_instead_of_the_file_is_a_failed_download(
    files: LoopbackFiles,
) -> None:
    url = files.serve("/files-pri/T-F1/a.txt", b"<html>Sign in</html>", content_type="text/html")
    files_reader = reader(files)
    try:
        (page,) = await files_reader.read_all([FileRef(name="a.txt", url=url)])
    finally:
        await files_reader.close()
    assert page.problem is AttachmentProblem.DOWNLOAD_FAILED


def test_slack_file_origins_come_from_the_api_url() -> None:
    assert slack_file_origins("https://slack.com/api/") == {
        ("https", "slack.com", 443),
        ("https", "files.slack.com", 443),
    }
    assert slack_file_origins("http://127.0.0.1:8123/api/") == {("http", "127.0.0.1", 8123)}
    assert slack_file_origins("not a url") == frozenset()
    assert origin_of(URL("https://files.slack.com.evil.example/x")) not in slack_file_origins(
        "https://slack.com/api/"
    )


async def test_downloads_respect_the_concurrency_limit_and_the_file_count(
    files: LoopbackFiles,
) -> None:
    running = 0
    most = 0

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return web.Response(text=request.path)

    refs = []
    for n in range(MAX_FILES + 2):
        url = files.route(f"/f{n}.txt", counted)
        refs.append(FileRef(name=f"f{n}.txt", url=url))
    files_reader = AttachmentReader(options=AttachmentOptions(concurrency=3))
    try:
        results = await files_reader.read_all(refs)
    finally:
        await files_reader.close()
    assert most == 3
    assert [r.text for r in results[:MAX_FILES]] == [f"/f{n}.txt" for n in range(MAX_FILES)]
    assert [r.problem for r in results[MAX_FILES:]] == [AttachmentProblem.TOO_MANY] * 2
    assert len(files.requests) == MAX_FILES


async def test_images_are_not_downloaded(files: LoopbackFiles) -> None:
    url = files.serve("/shot.png", b"\x89PNG", content_type="image/png")
    files_reader = AttachmentReader()
    try:
        (shot,) = await files_reader.read_all(
            [FileRef(name="shot.png", url=url, media_type="image/png")]
        )
    finally:
        await files_reader.close()
    assert shot.problem is AttachmentProblem.BINARY and files.requests == []


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 3000),
    limit=st.integers(1024, 2048),
    chunked=st.booleans(),
    piece=st.integers(1, 700),
)
def test_a_file_is_read_exactly_when_it_is_within_the_limit(
    size: int, limit: int, chunked: bool, piece: int
) -> None:
    """Whatever the size and however the body comes (with a Content-Length, or chunked in pieces
    of any size), a file is read whole when it has at most ``limit`` bytes and refused otherwise."""
    body = bytes(ord("a") + n % 26 for n in range(size))

    async def serve(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="text/plain")
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        for start in range(0, size, piece):
            await response.write(body[start : start + piece])
        await response.write_eof()
        return response

    async def scenario() -> tuple[AttachmentProblem | None, str]:
        server = LoopbackFiles()
        await server.start()
        files_reader = AttachmentReader(options=AttachmentOptions(max_bytes=limit))
        try:
            url = server.route("/f.txt", serve)
            (read,) = await files_reader.read_all([FileRef(name="f.txt", url=url)])
            return read.problem, read.text
        finally:
            await files_reader.close()
            await server.stop()

    problem, text = asyncio.run(scenario())
    if size <= limit:
        assert (problem, text) == (None, body.decode())
    else:
        assert (problem, text) == (AttachmentProblem.TOO_BIG, "")
