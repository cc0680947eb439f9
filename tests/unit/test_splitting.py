"""bot.splitting: platform-sized chunks that keep code fences balanced and lose nothing."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.splitting import split_message, split_pieces

FENCE_LINE = re.compile(r"^ {0,3}(`{3,})([^`]*)$")


def open_fence_after(chunk: str) -> str | None:
    """An independent fence tracker: the opening fence still open at the end of ``chunk``.

    A fence line opens a block that only a bare fence line of at least as many backticks closes;
    outside a block, 3+ backticks in the middle of a line open one as well (reported as its
    backticks), and runs on that line pair up."""
    opened: str | None = None
    ticks = 0
    for line in chunk.split("\n"):
        line = line.rstrip("\r")
        match = FENCE_LINE.match(line)
        if match is not None:
            if opened is None:
                opened, ticks = line, len(match.group(1))
            elif len(match.group(1)) >= ticks and not match.group(2).strip():
                opened = None
            continue
        if opened is not None:
            continue  # backticks inside a block are code
        at = 0
        while (start := line.find("```", at)) >= 0:
            end = start
            while end < len(line) and line[end] == "`":
                end += 1
            if opened is None:
                opened, ticks = line[start:end], end - start
            elif end - start >= ticks:
                opened = None
            at = end
    return opened


def check(text: str, limit: int) -> list[str]:
    pieces = split_pieces(text, limit=limit)
    chunks = [piece.text for piece in pieces]
    assert chunks == split_message(text, limit=limit)
    assert all(0 < len(chunk) <= limit for chunk in chunks), [len(c) for c in chunks]
    # A fence line longer than the room left must be cut and cannot be kept whole (documented).
    longest_fence = max(
        (len(line) for line in text.split("\n") if FENCE_LINE.match(line)), default=0
    )
    if longest_fence < limit // 2:
        assert all(open_fence_after(chunk) is None for chunk in chunks)
    # Nothing lost, nothing reordered: the spans tile the input and only fence lines were added.
    assert "".join(text[piece.start : piece.end] for piece in pieces) == text
    for previous, piece in zip([None, *pieces], pieces, strict=False):
        assert piece.text == piece.reopen + text[piece.start : piece.end] + piece.close
        assert re.fullmatch(r"(\n?`{3,})?", piece.close)
        if piece.reopen:
            assert previous is not None and previous.close  # reopened only what was closed
            assert FENCE_LINE.match(piece.reopen.rstrip("\n"))
            opener = open_fence_after(text[: piece.start])
            assert opener is not None
            if opener.startswith(" ") or opener == piece.reopen.rstrip("\n"):
                assert piece.reopen.rstrip("\n") == opener  # a fence line: reopened as written
            else:  # opened mid-line: reopened with as many backticks
                assert re.match("`+", piece.reopen)[0] == re.match("`+", opener)[0]  # type: ignore[index]
    return chunks


def test_short_text_is_one_chunk_and_empty_text_none() -> None:
    assert split_message("hello", limit=2000) == ["hello"]
    assert split_message("", limit=2000) == []
    assert split_message("x" * 2000, limit=2000) == ["x" * 2000]


def test_prefers_paragraphs_then_lines_then_words() -> None:
    para = "word " * 30 + "\n\n"
    chunks = check(para * 3, 400)
    assert all(c.endswith("\n\n") for c in chunks[:-1])
    lines = ("word " * 30).strip() + "\n"
    chunks = check(lines * 5, 400)
    assert all(c.endswith("\n") for c in chunks[:-1])
    chunks = check("abc " * 300, 400)
    assert all(c.endswith(" ") and not c.startswith(" ") for c in chunks)


def test_a_single_overlong_word_is_cut_hard() -> None:
    chunks = check("start " + "x" * 1000 + " end", 300)
    assert max(len(c) for c in chunks) == 300
    assert chunks[0] == "start "


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "".join(f"    value_{i} = compute({i})\n" for i in range(200))
    text = "Here you go:\n\n```python\n" + code + "```\n\nDone."
    chunks = check(text, 2000)
    assert len(chunks) >= 3
    assert chunks[0].startswith("Here you go:") and chunks[0].endswith("\n```")
    for chunk in chunks[1:-1]:
        assert chunk.startswith("```python\n    value_") and chunk.endswith("```")
    assert chunks[-1].endswith("Done.")


def test_unbalanced_fence_from_a_cut_off_model_is_closed() -> None:
    text = "Start:\n```js\n" + "let a = 1;\n" * 300
    chunks = check(text, 1000)
    assert all(chunk.endswith("```") for chunk in chunks)
    assert split_message("```py\nprint(1)", limit=2000) == ["```py\nprint(1)\n```"]


def test_longer_fences_are_handled() -> None:
    text = "````md\n```python\nx\n```\n" + "y\n" * 700 + "````\n"
    chunks = check(text, 500)
    assert chunks[1].startswith("````md\n") and chunks[0].endswith("````")


def test_very_long_lines_inside_code() -> None:
    text = "```\n" + "a" * 5000 + "\n```"
    chunks = check(text, 2000)
    assert all(c.startswith("```") and c.endswith("```") for c in chunks)


def test_limit_too_small_is_an_error() -> None:
    with pytest.raises(ValueError):
        split_message("text", limit=5)


def _random_text(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(0, 400)):
        roll = rng.random()
        if roll < 0.6:
            parts.append("".join(rng.choices("abcdefghij", k=rng.randint(1, 12))))
            parts.append(rng.choice([" ", " ", " ", "  ", "\t"]))
        elif roll < 0.75:
            parts.append("\n")
        elif roll < 0.82:
            parts.append("\n\n")
        elif roll < 0.88:
            parts.append("\n" + rng.choice(["```", "```python", "````", "```js", "  ```"]) + "\n")
        elif roll < 0.9:
            parts.append("x" * rng.randint(50, 3000))  # one enormous word
        elif roll < 0.92:
            parts.append(" " * rng.randint(1, 80))
        else:
            parts.append(rng.choice(["é", "日本", "🙂", "`", "``", "~~~"]))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(40))
def test_random_texts_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        text = _random_text(rng)
        limit = rng.choice([16, 40, 100, 500, 2000])
        check(text, limit)


# Lines with fences in every position a model writes them, mid-line openers included.
FENCY_LINE = st.sampled_from(
    [
        "Here: ```python",
        "```",
        "```js",
        "````",
        "x = 1 ``` y",
        "run ```ls``` now",
        "   ```",
        "    ```not a fence",
        "text",
        "",
        "a longer line of prose with words in it",
        "print('```')",
        "done ``` and ```` more",
    ]
) | st.text(alphabet="`ab \n", max_size=12)


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(FENCY_LINE, max_size=30), limit=st.integers(40, 300))
def test_fences_opened_anywhere_stay_balanced_and_nothing_is_added_but_fences(
    lines: list[str], limit: int
) -> None:
    text = "\n".join(lines)
    chunks = check(text, limit)  # every chunk balanced; chunks minus added fences == text
    if len(text) <= limit and open_fence_after(text) is None:
        assert chunks == ([text] if text else [])  # balanced text that fits: untouched


def test_a_fence_opened_mid_line_gets_no_stray_closing_fence() -> None:
    reply = "Here: ```python\nprint(1)\n```\nThat prints 1."
    assert split_message(reply, limit=2000) == [reply]
    assert split_message("Run ```ls``` first.\n```\ncode", limit=2000) == [
        "Run ```ls``` first.\n```\ncode\n```"
    ]
