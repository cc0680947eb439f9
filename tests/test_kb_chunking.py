"""Extraction of every format and chunking by headings with SOLAR's tokenizer (issue 14)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import KnowledgeBaseError
from bot.kb.chunking import ChunkLimits, TokenCounter, chunk_blocks, tokenizer_counter
from bot.kb.extract import Block, BlockKind, Format, extract, format_for
from bot.prompt_room import FileTokenizer
from tests.kb_support import build_solar_tokenizer, minimal_pdf


@pytest.fixture(scope="module")
def count(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    folder = build_solar_tokenizer(tmp_path_factory.mktemp("solar-tokenizer"))
    return tokenizer_counter(FileTokenizer(folder))


def test_the_counter_is_solars_tokenizer(count: TokenCounter) -> None:
    # SOLAR (Llama vocabulary): "Hello world" is two pieces, a newline a byte token.
    assert count(["Hello world", "", "\n"]) == [2, 0, 2]


MARKDOWN = """# Widget Guide

Intro paragraph about widgets.

## Install

Run the installer:

```sh
pip install widget

# not a heading inside the fence
```

Setup Notes
-----------

Text under a setext heading.
"""


def test_markdown_blocks_keep_headings_and_fences() -> None:
    doc = extract(MARKDOWN.encode(), fmt=Format.MARKDOWN, fallback_title="x")
    assert doc.title == "Widget Guide"
    kinds = [(b.kind, b.level) for b in doc.blocks]
    assert kinds == [
        (BlockKind.HEADING, 1),
        (BlockKind.TEXT, 0),
        (BlockKind.HEADING, 2),
        (BlockKind.TEXT, 0),
        (BlockKind.CODE, 0),
        (BlockKind.HEADING, 2),
        (BlockKind.TEXT, 0),
    ]
    code = doc.blocks[4].text
    assert code.startswith("```sh") and code.endswith("```")
    assert "# not a heading inside the fence" in code
    assert doc.blocks[5].text == "Setup Notes"


HTML = """<!doctype html><html><head><title>Page title</title>
<style>.x { color: red }</style><script>var secret = "script text";</script></head>
<body><header>Site header</header>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<div class="sphinxsidebar" role="navigation"><div><h3>Navigation</h3><p>sidebar text</p></div></div>
<main><h1>Real Title<a class="headerlink" href="#t">¶</a></h1>
<p>First <b>bold</b> paragraph &amp; more.</p>
<h2>Section A</h2><ul><li>item one</li><li>item two</li></ul>
<pre>def f():
    return 1</pre>
<dl><dt>sorted(iterable)</dt><dd><p>Return a new list.</p></dd></dl>
</main>
<div class="toctree-wrapper compound"><ul><li>toc entry</li></ul></div>
<aside>related links</aside><footer>© footer</footer>
<noscript>enable js</noscript></body></html>"""


def test_html_keeps_the_content_and_drops_the_boilerplate() -> None:
    doc = extract(HTML.encode(), fmt=Format.HTML, fallback_title="x")
    assert doc.title == "Real Title"
    texts = [b.text for b in doc.blocks]
    joined = "\n".join(texts)
    for dropped in (
        "Site header",
        "Home",
        "sidebar text",
        "Navigation",
        "script text",
        "color",
        "related links",
        "footer",
        "enable js",
        "toc entry",
        "¶",
    ):
        assert dropped not in joined
    assert texts == [
        "Real Title",
        "First bold paragraph & more.",
        "Section A",
        "item one",
        "item two",
        "def f():\n    return 1",
        "sorted(iterable)",
        "Return a new list.",
    ]
    assert doc.blocks[5].kind is BlockKind.CODE
    assert doc.blocks[2].kind is BlockKind.HEADING and doc.blocks[2].level == 2


def test_html_title_falls_back_to_the_title_element() -> None:
    doc = extract(b"<title>Only title</title><p>text</p>", fmt=Format.HTML, fallback_title="x")
    assert doc.title == "Only title"


def test_plain_text_is_paragraphs() -> None:
    doc = extract(b"one two\nthree\n\n\nfour", fmt=Format.TEXT, fallback_title="notes")
    assert doc.title == "notes"
    assert [b.text for b in doc.blocks] == ["one two three", "four"]


def test_pdf_pages_become_sections() -> None:
    data = minimal_pdf(
        [["Refund policy", "Refunds take 5 days."], ["Page two text"]], title="Handbook"
    )
    doc = extract(data, fmt=Format.PDF, fallback_title="x")
    assert doc.title == "Handbook"
    assert [b.text for b in doc.blocks if b.kind is BlockKind.HEADING] == ["page 1", "page 2"]
    body = " ".join(b.text for b in doc.blocks if b.kind is BlockKind.TEXT)
    assert "Refunds take 5 days." in body and "Page two text" in body


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", Format.TEXT, "binary"),
        ("café".encode("latin-1"), Format.MARKDOWN, "not UTF-8"),
        (b"%PDF-1.4\n1 0 obj garbage", Format.PDF, "not a readable PDF"),
        (b"just text", Format.PDF, "not a readable PDF"),
        (minimal_pdf([["x"]])[:60], Format.PDF, "not a readable PDF"),
    ],
)
def test_unreadable_sources_get_one_clear_line(data: bytes, fmt: Format, reason: str) -> None:
    with pytest.raises(KnowledgeBaseError, match=reason) as caught:
        extract(data, fmt=fmt, fallback_title="x")
    assert "\n" not in str(caught.value)


def test_formats_come_from_media_type_or_name() -> None:
    assert format_for("a.md") is Format.MARKDOWN
    assert format_for("page", "text/html; charset=utf-8") is Format.HTML
    assert format_for("doc.pdf", "application/octet-stream") is Format.PDF
    assert format_for("notes.md", "text/plain") is Format.MARKDOWN
    assert format_for("x.png") is None


def test_chunks_follow_headings_and_carry_the_path(count: TokenCounter) -> None:
    section = " ".join(["Widgets need regular care and feeding."] * 40)
    blocks = [
        Block(kind=BlockKind.HEADING, text="Guide", level=1),
        Block(kind=BlockKind.HEADING, text="Care", level=2),
        Block(kind=BlockKind.TEXT, text=section),
        Block(kind=BlockKind.HEADING, text="Feeding", level=3),
        Block(kind=BlockKind.TEXT, text=section),
        Block(kind=BlockKind.HEADING, text="Storage", level=2),
        Block(kind=BlockKind.TEXT, text="Keep them dry."),
    ]
    chunks = chunk_blocks(blocks, count=count, limits=ChunkLimits(max_tokens=300, min_tokens=200))
    paths = [c.heading_path for c in chunks]
    assert paths[0] == ("Guide",)
    assert ("Guide", "Care", "Feeding") in paths
    assert paths[-1] == ("Guide", "Storage")
    assert chunks[-1].text == "Storage\n\nKeep them dry."
    assert all(c.token_count <= 300 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))


WORDS = st.sampled_from(
    [
        "the",
        "widget",
        "configuration",
        "antidisestablishmentarianism",
        "x",
        "naïve",
        "日本語",
        "co-operate",
        "e.g.",
        "3.14",
        "(see",
        "below)",
        "`code`",
        "end.",
        "why?",
        "Done!",
    ]
)
LONG_WORD = st.text(alphabet="abcdefghij", min_size=200, max_size=600)
BLOCKS = st.lists(
    st.one_of(
        st.builds(
            lambda words, level: Block(kind=BlockKind.HEADING, text=" ".join(words), level=level),
            st.lists(WORDS, min_size=1, max_size=5),
            st.integers(1, 4),
        ),
        st.builds(
            lambda words: Block(kind=BlockKind.TEXT, text=" ".join(words)),
            st.lists(WORDS | LONG_WORD, min_size=1, max_size=400),
        ),
        st.builds(
            lambda lines: Block(kind=BlockKind.CODE, text="```\n" + "\n".join(lines) + "\n```"),
            st.lists(st.lists(WORDS, max_size=12).map(" ".join), min_size=1, max_size=80),
        ),
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blocks=BLOCKS, max_tokens=st.integers(40, 300), ratio=st.floats(0.1, 1.0))
def test_chunks_cover_the_text_in_order_within_bounds_never_cutting_words_or_code(
    count: TokenCounter, blocks: list[Block], max_tokens: int, ratio: float
) -> None:
    limits = ChunkLimits(max_tokens=max_tokens, min_tokens=max(1, int(max_tokens * ratio)))
    chunks = chunk_blocks(blocks, count=count, limits=limits)
    # Every word of every block, in order, and nothing else (a cut word would show as two).
    assert " ".join(c.text for c in chunks).split() == " ".join(b.text for b in blocks).split()
    assert [c.position for c in chunks] == list(range(len(chunks)))
    code_blocks = [b.text for b in blocks if b.kind is BlockKind.CODE]
    for code in code_blocks:
        assert any(code in c.text for c in chunks), "a code block was cut"
    assert count([c.text for c in chunks]) == [c.token_count for c in chunks]
    for chunk in chunks:
        indivisible = chunk.text in code_blocks or len(chunk.text.split()) == 1
        assert chunk.token_count <= limits.max_tokens or indivisible
    headings = {b.text for b in blocks if b.kind is BlockKind.HEADING}
    assert all(set(c.heading_path) <= headings for c in chunks)


VALID_PDF = minimal_pdf([["Refund policy", "Refunds take 5 days."], ["Page two"]], title="T")


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.tuples(st.integers(0, len(VALID_PDF) - 1), st.binary(max_size=8)), max_size=6),
    truncate=st.integers(0, len(VALID_PDF)),
)
def test_a_damaged_pdf_is_refused_in_one_line_or_read(
    cuts: list[tuple[int, bytes]], truncate: int
) -> None:
    data = bytearray(VALID_PDF[:truncate] if truncate > 8 else VALID_PDF)
    for at, junk in cuts:
        data[at : at + len(junk)] = junk
    try:
        doc = extract(bytes(data), fmt=Format.PDF, fallback_title="x")
    except KnowledgeBaseError as exc:
        assert "\n" not in str(exc)
    else:
        assert all("\x00" not in b.text for b in doc.blocks)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(
        alphabet=st.sampled_from(list("<>/=\"' \n#`~-*[]()&;!abcdefgh")) | st.characters(),
        max_size=400,
    ),
    fmt=st.sampled_from([Format.HTML, Format.MARKDOWN, Format.TEXT]),
)
def test_any_text_extracts_without_raising_and_stores_alike(text: str, fmt: Format) -> None:
    data = text.encode("utf-8", "surrogatepass")
    try:
        doc = extract(data, fmt=fmt, fallback_title="x")
    except KnowledgeBaseError:
        return  # lone surrogates are not UTF-8, NUL is binary: refused in one line
    for block in doc.blocks:
        assert block.text == block.text.strip() or block.kind is BlockKind.CODE
        assert not any(c in block.text for c in "\x00\ud800")


def test_chunk_limit_settings_are_checked_together() -> None:
    from bot.errors import ConfigError
    from bot.settings import load_settings

    with pytest.raises(ConfigError, match="SOLARBOT_KB_CHUNK_MIN_TOKENS=400 is larger than"):
        load_settings(environ={"SOLARBOT_KB_CHUNK_MIN_TOKENS": "400"})
    with pytest.raises(ConfigError, match="SOLARBOT_KB_FETCH_CONCURRENCY"):
        load_settings(environ={"SOLARBOT_KB_FETCH_CONCURRENCY": "0"})
    settings = load_settings(
        environ={"SOLARBOT_KB_CHUNK_MAX_TOKENS": "500", "SOLARBOT_KB_COLLECTION": "support"}
    )
    assert (settings.kb_chunk_max_tokens, settings.kb_collection) == (500, "support")
