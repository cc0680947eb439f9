"""Markdown -> Slack mrkdwn, and Slack text -> plain text for the model."""

from __future__ import annotations

import pytest

from adapters.slack_format import from_slack, to_mrkdwn
from bot.splitting import split_message


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __also__", "*bold* and *also*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~gone~~", "~gone~"),
        ("see [the docs](https://x.io/a?b=1&c=2)", "see <https://x.io/a?b=1&amp;c=2|the docs>"),
        ("![a chart](https://x.io/c.png)", "<https://x.io/c.png|a chart>"),
        ("# Title\n## Sub **x**", "*Title*\n*Sub x*"),
        ("- one\n* two\n  + three", "• one\n• two\n  • three"),
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("> a quote with <tag>", "> a quote with &lt;tag&gt;"),
        ("<!channel> hi", "&lt;!channel&gt; hi"),
        ("use `x**2 < y` here", "use `x**2 &lt; y` here"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("snake_case_name", "snake_case_name"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_keep_their_content_and_lose_the_language_tag() -> None:
    markdown = "Try:\n```python\nif a<b and x**2:\n    print('**no** [x](y)')\n```\nDone **ok**."
    assert to_mrkdwn(markdown) == (
        "Try:\n```\nif a&lt;b and x**2:\n    print('**no** [x](y)')\n```\nDone *ok*."
    )


def test_split_chunks_convert_independently_with_fences_intact() -> None:
    code = "\n".join(f"line {i} = {i} ** 2" for i in range(60))
    markdown = f"Intro **text**.\n\n```python\n{code}\n```\nOutro."
    chunks = [to_mrkdwn(chunk) for chunk in split_message(markdown, limit=400)]
    assert len(chunks) > 2
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0
        assert "```python" not in chunk
    assert "line 59 = 59 ** 2" in "".join(chunks)  # code is never "bolded"


def test_slack_text_becomes_plain_text_for_the_model() -> None:
    text = (
        "<@U0BOT> hi <@U12|bob>, see <https://a.io/?x=1&amp;y=2|docs> and <https://b.io> "
        "in <#C1|general>: a &lt; b &amp;&amp; c &gt; d <!here>"
    )
    assert from_slack(text, bot_user_id="U0BOT") == (
        "hi @bob, see docs (https://a.io/?x=1&y=2) and https://b.io in #general: "
        "a < b && c > d @here"
    )
