"""Where knowledge-base documents come from: files, folders (recursive), web pages and sitemaps.

Web sources are fetched politely: a few requests at a time, each with a timeout and a size limit,
and pages a sitemap lists on another host are left out unless ``any_host`` allows them (also
when a redirect leads there)."""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urlsplit

from bot.errors import KnowledgeBaseError
from bot.kb.extract import SUFFIXES

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "solarbot-kb/1 (+https://github.com/solarbot; knowledge-base ingestion)"
SITEMAP_DEPTH = 3
MAX_REDIRECTS = 5
MAX_SITEMAP_URLS = 50_000
_LOC = re.compile(rb"<loc>\s*(.*?)\s*</loc>", re.DOTALL | re.IGNORECASE)
_SITEMAP_ROOT = re.compile(rb"<(?:\w+:)?(urlset|sitemapindex)\b", re.IGNORECASE)


class SourceGone(KnowledgeBaseError):
    """The source no longer exists (a missing file, HTTP 404 or 410): ``kb sync`` removes it."""


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    concurrency: int = 4
    timeout_seconds: float = 20.0
    max_bytes: int = 20 * 1024 * 1024
    any_host: bool = False


@dataclass(frozen=True, kw_only=True)
class Fetched:
    """A source's bytes and what is known of them."""

    source_uri: str  # the file's absolute path, or the URL without its fragment
    link: str  # what a citation links to
    name: str  # file name or URL path: for the format and the fallback title
    data: bytes
    media_type: str | None = None


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def is_re_readable(origin: str) -> bool:
    """Whether ``kb sync`` can read ``origin`` again (a path or a URL; not a chat message)."""
    return is_url(origin) or origin.startswith("/")


def local_files(origin: Path) -> list[Path]:
    """The files under ``origin``: itself when a file; when a folder, every file with a known
    suffix below it (hidden files and folders left out), in path order."""
    if origin.is_file():
        return [origin]
    if not origin.is_dir():
        raise SourceGone(f"{origin}: no such file or folder")
    found = [
        path
        for path in origin.rglob("*")
        if path.is_file()
        and path.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(origin).parts)
    ]
    return sorted(found)


def read_file(path: Path, *, max_bytes: int) -> Fetched:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise KnowledgeBaseError(f"too large ({size} bytes; the limit is {max_bytes})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceGone("no such file") from None
    except OSError as exc:
        raise KnowledgeBaseError(f"cannot read it ({exc.strerror or exc})") from None
    return Fetched(source_uri=str(path), link=str(path), name=path.name, data=data)


def sitemap_locations(data: bytes) -> tuple[str, list[str]] | None:
    """``("urlset"|"sitemapindex", locations)`` when ``data`` is a sitemap, else None."""
    root = _SITEMAP_ROOT.search(data[:4096])
    if root is None:
        return None
    locations = [
        html.unescape(match.decode("utf-8", "replace")).strip() for match in _LOC.findall(data)
    ]
    return root.group(1).decode().lower(), locations[:MAX_SITEMAP_URLS]


def same_host(url: str, other: str) -> bool:
    return urlsplit(url).netloc.lower() == urlsplit(other).netloc.lower()


class WebFetcher:
    """An aiohttp session that fetches pages under ``FetchPolicy``: ``async with WebFetcher(p)``."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(policy.concurrency)

    async def __aenter__(self) -> WebFetcher:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.policy.timeout_seconds),
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> Fetched:
        """The page at ``url``. Raises ``SourceGone`` on 404/410, ``KnowledgeBaseError`` (one
        line) on any other failure."""
        import aiohttp

        assert self._session is not None, "use WebFetcher in `async with`"
        url = urldefrag(url).url
        try:
            async with self._slots:
                data, media_type = await self._get(url)
        except (aiohttp.ClientError, UnicodeError, ValueError) as exc:
            raise KnowledgeBaseError(f"cannot fetch it ({type(exc).__name__}: {exc})") from None
        except TimeoutError:
            raise KnowledgeBaseError(f"timed out after {self.policy.timeout_seconds:g} s") from None
        path = urlsplit(url).path
        return Fetched(
            source_uri=url,
            link=url,
            name=path.rsplit("/", 1)[-1] or "index.html",
            data=data,
            media_type=media_type,
        )

    async def _get(self, url: str) -> tuple[bytes, str | None]:
        """The body and media type at ``url``, following redirects ourselves so that one to
        another host is refused before it is requested (unless ``any_host``)."""
        from yarl import URL

        assert self._session is not None
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            async with self._session.get(target, allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.headers.get("Location", "")
                    following = str(URL(target).join(URL(location)))
                    if not is_url(following):
                        raise KnowledgeBaseError(f"redirected to {following[:100]!r}")
                    if not self.policy.any_host and not same_host(url, following):
                        raise KnowledgeBaseError(
                            f"redirected to another host ({urlsplit(following).netloc}); "
                            "use --any-host to follow"
                        )
                    target = following
                    continue
                if response.status in (404, 410):
                    raise SourceGone(f"HTTP {response.status}")
                if response.status >= 400:
                    raise KnowledgeBaseError(f"HTTP {response.status}")
                declared = response.content_length
                if declared is not None and declared > self.policy.max_bytes:
                    raise KnowledgeBaseError(
                        f"too large ({declared} bytes; the limit is {self.policy.max_bytes})"
                    )
                data = await response.content.read(self.policy.max_bytes + 1)
                if len(data) > self.policy.max_bytes:
                    raise KnowledgeBaseError(
                        f"too large (over {self.policy.max_bytes} bytes, the limit)"
                    )
                return data, response.headers.get("Content-Type")
        raise KnowledgeBaseError(f"more than {MAX_REDIRECTS} redirects")

    async def sitemap_pages(self, sitemap: Fetched, *, depth: int = 0) -> tuple[list[str], int]:
        """The page URLs a sitemap lists (a sitemap index's sitemaps read in turn), without
        duplicates, other hosts left out unless ``any_host``; and how many were left out."""
        parsed = sitemap_locations(sitemap.data)
        if parsed is None:
            return [], 0
        kind, locations = parsed
        allowed = [
            loc
            for loc in locations
            if is_url(loc) and (self.policy.any_host or same_host(sitemap.source_uri, loc))
        ]
        left_out = len(locations) - len(allowed)
        if kind == "urlset":
            return list(dict.fromkeys(urldefrag(loc).url for loc in allowed)), left_out
        if depth >= SITEMAP_DEPTH:
            return [], left_out
        pages: list[str] = []
        for child in allowed:
            found, skipped = await self.sitemap_pages(await self.fetch(child), depth=depth + 1)
            pages.extend(found)
            left_out += skipped
        return list(dict.fromkeys(pages)), left_out


def resolve_local(source: str) -> Path:
    return Path(source).expanduser().resolve()
