"""Markdown -> Slack mrkdwn, and Slack text -> plain text for the model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.slack_format import escape, from_slack, to_mrkdwn
from bot.hygiene import clean_outgoing
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


# Characters to_mrkdwn may add of its own: markup, entities, bullets and link brackets.
MARKUP = set("*_~`<>|&;amptlg•() /")  # "/": a "|" in a link label
NASTY = st.sampled_from(
    [
        "\x03",
        "\x04",
        "\x030\x04",
        "\x0399\x04",
        "\x01",
        "\x02",
        "\ue000",
        "\ue001",
        "\u202e",
        "\u2066",
        "\x1b[2J",
        "\x00",
        "\x85",
        "[x](https://a.io/?a=1&b=<2>)",
        "[**y**](mailto:a@b.c)",
        "[z](javascript:alert&1)",
        "[](https://e.io)",
        "**b**",
        "# h",
        "- i",
        "`c`",
        "```\n",
        "\n",
        " ",
        "<!channel>",
        "&lt;",
        "9",
    ]
)
ANY_TEXT = st.lists(NASTY | st.text(max_size=8), max_size=25).map("".join) | st.text()


@settings(max_examples=400, deadline=None)
@given(text=ANY_TEXT)
def test_any_text_converts_without_error_or_forged_markers(text: str) -> None:
    out = to_mrkdwn(text)  # never raises, whatever the text holds (\x03N\x04 included)
    assert set(out) - set(text) <= MARKUP  # nothing of its own but markup: no stand-in leaks
    cleaned = to_mrkdwn(clean_outgoing(text))  # what every delivery path hands it
    assert clean_outgoing(cleaned) == cleaned  # so no control or bidi character reaches Slack


TARGET = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc", "Z")).filter(
        lambda c: c not in '()[]`"' and not c.isspace()
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(path=TARGET)
def test_link_targets_are_escaped_exactly_once(path: str) -> None:
    web = "https://x.io/" + path
    out = to_mrkdwn(f"[label]({web})")
    if any(c in path for c in "<>|"):  # not a plain web link: shown as text, escaped once
        assert out == f"label ({escape(web)})"
    else:
        assert out == f"<{escape(web)}|label>"
    assert to_mrkdwn(f"[label]({path})") in (f"label ({escape(path)})", f"<{escape(path)}|label>")


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("[x](javascript:a&b)", "x (javascript:a&amp;b)"),
        ("[x](http://a.io/?q=<b>)", "x (http://a.io/?q=&lt;b&gt;)"),
        ("[**x**](https://a.io/?a&b)", "<https://a.io/?a&amp;b|*x*>"),
        ("**see [x](https://a.io)**", "*see <https://a.io|x>*"),
        ("a \x031\x04 b", "a \x031\x04 b"),
    ],
)
def test_link_targets_are_escaped_once(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn
