"""Documents as headed blocks of text: Markdown, HTML, plain text and PDF.

A block is a heading, a paragraph (list items, table cells and definition terms included) or a
code block; code blocks keep their whitespace and are never cut. HTML keeps only the content:
scripts, styles, forms, ``header``/``footer``/``nav``/``aside`` and elements that declare
themselves navigation (``role="navigation"``, Sphinx's sidebars and "related" bars, ...) are
dropped, as are the "¶" permalink anchors next to headings."""

from __future__ import annotations

import enum
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

from bot.errors import KnowledgeBaseError


class BlockKind(enum.Enum):
    HEADING = "heading"
    TEXT = "text"
    CODE = "code"


@dataclass(frozen=True, kw_only=True)
class Block:
    kind: BlockKind
    text: str
    level: int = 0  # headings: 1 for the title, 2.. below it


@dataclass(frozen=True, kw_only=True)
class Extracted:
    title: str
    blocks: tuple[Block, ...]


class Format(enum.Enum):
    MARKDOWN = "markdown"
    HTML = "html"
    TEXT = "text"
    PDF = "pdf"


SUFFIXES = {
    ".md": Format.MARKDOWN,
    ".markdown": Format.MARKDOWN,
    ".mdown": Format.MARKDOWN,
    ".html": Format.HTML,
    ".htm": Format.HTML,
    ".xhtml": Format.HTML,
    ".txt": Format.TEXT,
    ".text": Format.TEXT,
    ".rst": Format.TEXT,
    ".pdf": Format.PDF,
}
MEDIA_TYPES = {
    "text/markdown": Format.MARKDOWN,
    "text/x-markdown": Format.MARKDOWN,
    "text/html": Format.HTML,
    "application/xhtml+xml": Format.HTML,
    "text/plain": Format.TEXT,
    "application/pdf": Format.PDF,
}


def format_for(name: str, media_type: str | None = None) -> Format | None:
    """The format of a source from its media type (when known and specific) or its name."""
    if media_type:
        known = MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())
        if known is not None and known is not Format.TEXT:
            return known
    by_name = SUFFIXES.get(PurePosixPath(name).suffix.lower())
    if by_name is not None:
        return by_name
    if media_type and media_type.split(";")[0].strip().lower() == "text/plain":
        return Format.TEXT
    return None


def extract(data: bytes, *, fmt: Format, fallback_title: str) -> Extracted:
    """The blocks of a document. Raises ``KnowledgeBaseError`` (one line) when it is not what it
    claims to be: binary data, text that is not UTF-8, a broken PDF."""
    if fmt is Format.PDF:
        return _pdf(data, fallback_title=fallback_title)
    text = decode_text(data)
    if fmt is Format.HTML:
        return _html(text, fallback_title=fallback_title)
    if fmt is Format.MARKDOWN:
        return _markdown(text, fallback_title=fallback_title)
    return _plain(text, fallback_title=fallback_title)


def decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise KnowledgeBaseError("binary data, not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KnowledgeBaseError(
            f"not UTF-8 text (invalid byte at offset {exc.start}); convert it to UTF-8"
        ) from None
    return clean_text(text)


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_text(text: str) -> str:
    """Text both databases store alike: no NUL, control characters or lone surrogates, and
    ``\\n`` line ends."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _paragraphs(text: str) -> list[Block]:
    return [
        Block(kind=BlockKind.TEXT, text=_squash(part))
        for part in re.split(r"\n\s*\n", text)
        if part.strip()
    ]


def _plain(text: str, *, fallback_title: str) -> Extracted:
    return Extracted(title=fallback_title, blocks=tuple(_paragraphs(text)))


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def _markdown(text: str, *, fallback_title: str) -> Extracted:
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph and any(line.strip() for line in paragraph):
            blocks.append(Block(kind=BlockKind.TEXT, text="\n".join(paragraph).strip()))
        paragraph.clear()

    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence:
            flush()
            marker = fence.group(1)
            body = [line]
            index += 1
            while index < len(lines):
                body.append(lines[index])
                closing = _FENCE.match(lines[index])
                index += 1
                if (
                    closing
                    and closing.group(1)[0] == marker[0]
                    and len(closing.group(1)) >= len(marker)
                    and not lines[index - 1].strip()[len(closing.group(1)) :].strip()
                ):
                    break
            blocks.append(Block(kind=BlockKind.CODE, text="\n".join(body)))
            continue
        heading = _ATX.match(line)
        if heading:
            flush()
            title = _squash(heading.group(2) or "")
            if title:
                blocks.append(
                    Block(kind=BlockKind.HEADING, text=title, level=len(heading.group(1)))
                )
            index += 1
            continue
        underline = _SETEXT.match(line)
        if underline and len(paragraph) == 1:
            title = _squash(paragraph[0])
            paragraph.clear()
            level = 1 if underline.group(1)[0] == "=" else 2
            blocks.append(Block(kind=BlockKind.HEADING, text=title, level=level))
            index += 1
            continue
        if not line.strip():
            flush()
        else:
            paragraph.append(line)
        index += 1
    flush()
    title = next(
        (b.text for b in blocks if b.kind is BlockKind.HEADING and b.level == 1), fallback_title
    )
    return Extracted(title=title, blocks=tuple(blocks))


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _pdf(data: bytes, *, fallback_title: str) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        metadata = reader.metadata
        title = str(metadata.title) if metadata is not None and metadata.title else ""
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise KnowledgeBaseError(
            f"not a readable PDF ({type(exc).__name__}: {_line(exc)})"
        ) from None
    except Exception as exc:  # a hostile PDF can make pypdf raise anything
        raise KnowledgeBaseError(f"not a readable PDF ({type(exc).__name__})") from None
    if not data.startswith(b"%PDF"):
        raise KnowledgeBaseError("not a readable PDF (no %PDF header)")
    blocks: list[Block] = []
    for number, page in enumerate(pages, start=1):
        paragraphs = _paragraphs(clean_text(page))
        if paragraphs:
            blocks.append(Block(kind=BlockKind.HEADING, text=f"page {number}", level=2))
            blocks.extend(paragraphs)
    return Extracted(title=clean_text(title).strip() or fallback_title, blocks=tuple(blocks))


# HTML: what to drop whole, what ends a block, what is a heading.
SKIPPED_TAGS = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "nav",
        "header",
        "footer",
        "aside",
        "form",
        "button",
        "select",
        "iframe",
        "object",
        "canvas",
        "head",
    }
)
SKIPPED_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "complementary"})
SKIPPED_CLASSES = frozenset(
    {
        "sphinxsidebar",
        "related",
        "sidebar",
        "navbar",
        "nav",
        "navigation",
        "menu",
        "breadcrumb",
        "breadcrumbs",
        "footer",
        "header",
        "headerlink",
        "skip-link",
        "toc",
        "mobile-nav",
        "copybutton",
        "cookie-banner",
        "toctree-wrapper",  # Sphinx: generated lists of links to other pages
    }
)
BLOCK_TAGS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "table",
        "tr",
        "td",
        "th",
        "blockquote",
        "figure",
        "figcaption",
        "br",
        "hr",
        "body",
        "caption",
    }
)
HEADINGS = {f"h{n}": n for n in range(1, 7)}
VOID_TAGS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
)


class _ContentParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self._in_title = False
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._buffer: list[str] = []
        self._heading: int | None = None
        self._pre = 0

    def _skipping(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in SKIPPED_TAGS:
            return True
        values = dict(attrs)
        if (values.get("role") or "").lower() in SKIPPED_ROLES:
            return True
        classes = set((values.get("class") or "").lower().split())
        return bool(classes & SKIPPED_CLASSES)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth += 1
            return
        if tag == "title":
            self._in_title = True
            return
        if tag not in VOID_TAGS and self._skipping(tag, attrs):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in HEADINGS:
            self._flush()
            self._heading = HEADINGS[tag]
        elif tag == "pre":
            self._flush()
            self._pre += 1
        elif tag in BLOCK_TAGS and not self._pre:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag == "title":
            self._in_title = False
        elif tag in HEADINGS and self._heading is not None:
            text = _squash("".join(self._buffer))
            self._buffer.clear()
            if text:
                self.blocks.append(Block(kind=BlockKind.HEADING, text=text, level=self._heading))
            self._heading = None
        elif tag == "pre" and self._pre:
            self._pre -= 1
            if not self._pre:
                code = "".join(self._buffer).strip("\n")
                self._buffer.clear()
                if code.strip():
                    self.blocks.append(Block(kind=BlockKind.CODE, text=code))
        elif tag in BLOCK_TAGS and not self._pre:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None:
            return
        if self._in_title:
            self.title += data
            return
        self._buffer.append(data)

    def _flush(self) -> None:
        if self._heading is not None or self._pre:
            return
        text = _squash("".join(self._buffer))
        self._buffer.clear()
        if text:
            self.blocks.append(Block(kind=BlockKind.TEXT, text=text))

    def finish(self) -> None:
        self.close()
        self._heading = None
        self._pre = 0
        self._flush()


def _html(text: str, *, fallback_title: str) -> Extracted:
    parser = _ContentParser()
    parser.feed(text)
    parser.finish()
    blocks = tuple(
        Block(kind=b.kind, text=b.text.replace("¶", "").strip(), level=b.level)
        if b.kind is BlockKind.HEADING
        else b
        for b in parser.blocks
    )
    blocks = tuple(b for b in blocks if b.text)
    heading_title = next(
        (b.text for b in blocks if b.kind is BlockKind.HEADING and b.level == 1), ""
    )
    title = heading_title or _squash(parser.title) or fallback_title
    return Extracted(title=title, blocks=blocks)
