"""adapters.discord_format without a client: the bot's own mention is the only thing removed from
what users write (the end-to-end tests in test_discord.py go through discord.py and the fake)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord_format import without_own_mentions

ME = 42
OTHER = 7
MARKUP = re.compile(r"<(@[!&]?|#)\d+>|<a?:\w+:\d+>")
TEXT = (
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
    | st.text(alphabet=" \t\n\r`<>@&!#:0123456789ab", max_size=200)
).filter(lambda text: not MARKUP.search(text))


def mine(match: re.Match[str]) -> bool:
    return int(match.group(1) or match.group(2)) == ME


OWN = st.sampled_from([f"<@{ME}>", f"<@!{ME}>", f"<@&{ME}>"])


@settings(max_examples=400, deadline=None)
@given(text=TEXT, own=OWN, lead=st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_a_leading_mention_on_its_own_line_leaves_the_rest_byte_for_byte(
    text: str, own: str, lead: str
) -> None:
    assert without_own_mentions(f"{lead}{own}\n{text}", mine) == text
    assert without_own_mentions(f"{lead}{own} \t \r\n{text}", mine) == text


@settings(max_examples=400, deadline=None)
@given(
    line=TEXT.filter(lambda text: not text[:1].isspace()),
    own=OWN,
    gap=st.sampled_from([" ", "  ", "\t", ""]),
)
def test_a_leading_mention_on_a_line_with_text_takes_only_its_spaces(
    line: str, own: str, gap: str
) -> None:
    assert without_own_mentions(f"{own}{gap}{line}", mine) == line


@settings(max_examples=400, deadline=None)
@given(before=TEXT, after=TEXT, own=OWN)
def test_a_later_mention_takes_only_the_spaces_before_it(before: str, after: str, own: str) -> None:
    if not before.strip():
        return  # then it leads the message (the tests above)
    assert without_own_mentions(f"{before}{own}{after}", mine) == before.rstrip(" \t") + after


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(TEXT, min_size=1, max_size=5))
def test_other_peoples_mentions_are_left_to_the_renderer(parts: list[str]) -> None:
    text = f"<@{OTHER}>".join(parts)
    assert without_own_mentions(text, mine) == text
