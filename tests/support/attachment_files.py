"""Real files for the attached-files tests: a PDF written here byte by byte (one page per entry of
``pages``, Helvetica text, a correct cross-reference table: what pypdf reads), a broken PDF, binary
data, text in a legacy encoding, and a loopback HTTP server that serves whatever a test scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]], *, title: str = "") -> bytes:
    """A valid PDF whose page ``n`` shows the lines ``pages[n]`` (ASCII)."""
    count = len(pages)
    font = 3 + 2 * count
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        (
            "<< /Type /Pages /Kids ["
            + " ".join(f"{3 + 2 * n} 0 R" for n in range(count))
            + f"] /Count {count} >>"
        ).encode(),
    ]
    for n, lines in enumerate(pages):
        content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
            f"({_escape(line)}) Tj T*" for line in lines
        )
        stream = content.encode("latin-1") + b" ET"
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * n} 0 R "
                f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
            ).encode()
        )
        objects.append(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream"
        )
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = len(objects) + 1
    objects.append(f"<< /Title ({_escape(title)}) >>".encode())
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def broken_pdf() -> bytes:
    """Starts like a PDF, is not one."""
    return b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R\nthis is not a pdf at all\n"


BINARY = bytes(range(256)) * 8  # NUL bytes and all: what a compiled file or an image holds
LATIN1 = "Grüße aus Köln, naïve café\n".encode("latin-1")  # not UTF-8


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class LoopbackFiles:
    """An HTTP server on 127.0.0.1 whose routes the test sets (``route(path, handler)``); every
    request is recorded in ``requests`` as (path, headers)."""

    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base: str = ""

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None

    def route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.base + path

    def serve(self, path: str, body: bytes, *, content_type: str = "text/plain") -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type)

        return self.route(path, handler)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        handler = self.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)


async def endless(request: web.Request) -> web.StreamResponse:
    """A body that never ends (no Content-Length): only a reader that stops can finish."""
    response = web.StreamResponse()
    response.content_type = "text/plain"
    await response.prepare(request)
    while True:  # until the reader hangs up (the write then raises)
        await response.write(b"x" * 65536)
        await asyncio.sleep(0)
