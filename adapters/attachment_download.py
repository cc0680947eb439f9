"""Downloading the files attached to a message, for the adapters' ingress (issue 15, attached files).

``AttachmentReader.read_all`` turns the files a platform announces (``FileRef``: name, URL, media
type, declared size) into ``bot.records.Attachment`` records: downloaded with aiohttp on the event
loop (never blocking it), at most ``concurrency`` at once per adapter, each within
``timeout_seconds``; read on a thread (``bot.attachments.read_file``: pypdf is CPU work). What is
not a file we can read gets its ``AttachmentProblem`` and the question is still answered:

- a file the platform says is an image, audio, video or archive is not downloaded (``BINARY``);
- over ``max_bytes`` (``TOO_BIG``): by the declared size, by ``Content-Length``, or while reading
  the body, which is read in pieces and never past ``max_bytes + 1`` bytes;
- a failed download (``DOWNLOAD_FAILED``): an HTTP error (404, 500...), a timeout, a refused
  connection, a URL that is not http(s), more than ``MAX_REDIRECTS`` redirects, or (with a token)
  a host the token may not be sent to.

The bearer token (Slack's ``url_private`` needs the bot token) is sent only to ``auth_origins``
(scheme, host and port): Slack's file host, derived from the configured API URL
(``slack_file_origins``). A file URL elsewhere, or a redirect to another host, is refused rather
than fetched with the token or without it. Redirects are followed by hand for that reason.
A 200 answer that is an HTML page where a file was expected is how Slack says the app lacks the
``files:read`` scope: it counts as a failed download (and the log says so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from bot.attachments import MAX_FILES, FileKind, kind_of, read_file, unread
from bot.errors import SolarbotError
from bot.records import Attachment, AttachmentProblem

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Origin = tuple[str, str, int]


@dataclass(frozen=True, kw_only=True)
class AttachmentOptions:
    """How attached files are downloaded (``bot.service`` builds them from the settings)."""

    max_bytes: int = 2 * 1024 * 1024  # SOLARBOT_ATTACHMENT_MAX_BYTES
    timeout_seconds: float = 20.0  # SOLARBOT_ATTACHMENT_TIMEOUT_SECONDS, per file
    concurrency: int = 4  # SOLARBOT_ATTACHMENT_CONCURRENCY, downloads at once per adapter


@dataclass(frozen=True, kw_only=True)
class FileRef:
    """A file a platform says is attached to a message."""

    name: str
    url: str
    media_type: str = ""
    size: int | None = None  # as the platform declares it


class DownloadError(SolarbotError):
    """A file could not be downloaded (said in one line, without the token or the URL's query)."""


class TooBigError(DownloadError):
    """A file is larger than ``max_bytes``."""


def origin_of(url: URL) -> Origin | None:
    if url.scheme not in ("http", "https") or not url.host or url.port is None:
        return None
    return (url.scheme, url.host.lower(), url.port)


def slack_file_origins(api_url: str) -> frozenset[Origin]:
    """Where Slack's ``url_private`` files live, from the API URL: the API's own host and
    ``files.`` + it (``https://slack.com/api/`` -> slack.com and files.slack.com, port 443)."""
    api = URL(api_url)
    own = origin_of(api)
    if own is None:
        return frozenset()
    scheme, host, port = own
    origins = {own}
    if not host.replace(".", "").isdigit() and ":" not in host:  # a name, not an address
        origins.add((scheme, f"files.{host}", port))
    return frozenset(origins)


@dataclass(kw_only=True)
class AttachmentReader:
    """Reads the files of messages for one adapter (its own HTTP session and concurrency)."""

    options: AttachmentOptions = field(default_factory=AttachmentOptions)
    bearer: str | None = field(default=None, repr=False)  # sent only to ``auth_origins``
    auth_origins: frozenset[Origin] = frozenset()

    def __post_init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(self.options.concurrency)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        return self._session

    async def read_all(self, files: Sequence[FileRef]) -> tuple[Attachment, ...]:
        """Every file's record, in order: the first ``MAX_FILES`` read at once (within the
        concurrency limit), the others marked ``TOO_MANY``."""
        read = await asyncio.gather(*(self.read(ref) for ref in files[:MAX_FILES]))
        rest = [
            unread(ref.name, ref.media_type, AttachmentProblem.TOO_MANY, size=ref.size or 0)
            for ref in files[MAX_FILES:]
        ]
        return (*read, *rest)

    async def read(self, ref: FileRef) -> Attachment:
        declared = ref.size or 0
        if kind_of(ref.name, ref.media_type) is FileKind.BINARY:
            return unread(ref.name, ref.media_type, AttachmentProblem.BINARY, size=declared)
        if ref.size is not None and ref.size > self.options.max_bytes:
            return unread(ref.name, ref.media_type, AttachmentProblem.TOO_BIG, size=declared)
        try:
            data = await self.download(ref.url)
        except TooBigError as exc:
            log.info("attached file not read (%s)", exc)
            return unread(ref.name, ref.media_type, AttachmentProblem.TOO_BIG, size=declared)
        except DownloadError as exc:
            log.warning("could not download an attached file: %s", exc)
            return unread(
                ref.name, ref.media_type, AttachmentProblem.DOWNLOAD_FAILED, size=declared
            )
        return await asyncio.to_thread(read_file, ref.name, ref.media_type, data)

    async def download(self, url: str) -> bytes:
        """The body at ``url`` (redirects followed by hand), at most ``max_bytes``."""
        async with self._semaphore:
            try:
                async with asyncio.timeout(self.options.timeout_seconds):
                    return await self._download(URL(url))
            except TimeoutError:
                raise DownloadError(
                    f"no complete answer within {self.options.timeout_seconds:g} s"
                ) from None
            except aiohttp.ClientError as exc:
                raise DownloadError(f"{type(exc).__name__}") from None
            except ValueError as exc:  # yarl/aiohttp: a URL it cannot use
                raise DownloadError(f"not a usable URL ({type(exc).__name__})") from None

    async def _download(self, url: URL) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            origin = origin_of(url)
            if origin is None:
                raise DownloadError("not an http(s) URL")
            # The limit counts the bytes as sent: no compressed body that unpacks past it.
            headers = {"Accept-Encoding": "identity"}
            if self.bearer is not None:
                if origin not in self.auth_origins:
                    # Never the token to another host; and a Slack file is not served elsewhere.
                    raise DownloadError(f"{origin[1]} is not the platform's file host")
                headers["Authorization"] = f"Bearer {self.bearer}"
            async with self._client().get(url, headers=headers, allow_redirects=False) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    url = url.join(URL(response.headers["Location"]))
                    continue
                if response.status != 200:
                    raise DownloadError(f"HTTP {response.status} from {origin[1]}")
                if self.bearer is not None and response.content_type == "text/html":
                    raise DownloadError(
                        "the file host answered with a web page (does the Slack app have the "
                        "files:read scope?)"
                    )
                return await self._body(response)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects")

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.options.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise TooBigError(f"Content-Length {response.content_length} > {limit} bytes")
        body = bytearray()
        while len(body) <= limit:
            piece = await response.content.read(min(CHUNK_BYTES, limit + 1 - len(body)))
            if not piece:
                return bytes(body)
            body += piece
        raise TooBigError(f"more than {limit} bytes")


def slack_file_refs(event: dict[str, Any]) -> list[FileRef]:
    """The files of a Slack message event (``files``: ``url_private_download`` or
    ``url_private``; a file without one, hidden or deleted, fails to download)."""
    refs: list[FileRef] = []
    for item in event.get("files") or []:
        if not isinstance(item, dict):
            continue
        url = item.get("url_private_download") or item.get("url_private") or ""
        size = item.get("size")
        refs.append(
            FileRef(
                name=str(item.get("name") or item.get("title") or "file"),
                url=str(url),
                media_type=str(item.get("mimetype") or ""),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    return refs


def discord_file_refs(attachments: Sequence[Any]) -> list[FileRef]:
    """The files of a Discord message (``discord.Attachment``: filename, url, content_type,
    size)."""
    return [
        FileRef(
            name=str(attachment.filename),
            url=str(attachment.url),
            media_type=str(attachment.content_type or ""),
            size=int(attachment.size),
        )
        for attachment in attachments
    ]
