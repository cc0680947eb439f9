"""Truncating a too-long newest message, with SOLAR's real tokenizer: what is kept is a true prefix
of what the user wrote, fits the budget, and is the longest prefix that does (issue 13.10: a
message of emoji, each several byte tokens, used to be cut to nothing)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.conversation import TRUNCATION_MARKER, PromptBuilder, Turn
from bot.generation.loading import HFTokenizer

HEAD = "### User:\n"
TAIL = TRUNCATION_MARKER + "\n\n### Assistant:\n"

# Emoji (byte-fallback tokens, ZWJ sequences, flags, skin tones), CJK, combining marks, plain words.
PIECES = st.sampled_from(
    [
        "😀",
        "🎉",
        "👩\u200d💻",
        "🇫🇷",
        "👍🏽",
        "𝄞",
        "日本語",
        "鿋",
        "한국어",
        "e\u0301",
        "a\u0308\u0323",
        "\u0301",
        " ",
        "\n",
        "word",
        "ok.",
        "Ωμέγα",
        "مرحبا",
    ]
)
TEXT = st.lists(PIECES, min_size=1, max_size=120).map("".join) | st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="#<"), max_size=200
)


def prompt_tokens(tokenizer: HFTokenizer, kept: str) -> int:
    messages = [{"role": "user", "content": kept + TRUNCATION_MARKER}]
    return len(
        tokenizer.encode(tokenizer.render_chat(messages, add_generation_prompt=True), add_bos=True)
    )


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT, room=st.integers(0, 80))
def test_truncation_keeps_the_longest_prefix_that_fits(
    tiny_tokenizer: HFTokenizer, text: str, room: int
) -> None:
    fixed = prompt_tokens(tiny_tokenizer, "")
    builder = PromptBuilder(tiny_tokenizer, context_window=fixed + room + 1, max_new_tokens=1)
    whole = len(
        tiny_tokenizer.encode(
            tiny_tokenizer.render_chat(
                [{"role": "user", "content": text}], add_generation_prompt=True
            ),
            add_bos=True,
        )
    )
    built = builder.build(system_prompt="", history=[Turn(role="user", text=text)])
    if whole <= builder.budget:
        assert not built.newest_truncated
        return
    assert built.newest_truncated
    assert built.prompt_text.startswith(HEAD) and built.prompt_text.endswith(TAIL)
    kept = built.prompt_text[len(HEAD) : -len(TAIL)]
    assert text.startswith(kept)  # a true prefix: no character cut in half, nothing replaced
    assert built.prompt_tokens == len(built.prompt_ids) <= builder.budget
    assert built.prompt_ids == tiny_tokenizer.encode(built.prompt_text, add_bos=True)
    # The longest: no longer prefix of the message fits (checked one length at a time).
    longer_fitting = [
        n
        for n in range(len(kept) + 1, len(text))
        if prompt_tokens(tiny_tokenizer, text[:n]) <= builder.budget
    ]
    assert longer_fitting == [], (len(kept), longer_fitting)


def test_a_message_of_emoji_keeps_as_many_emoji_as_fit(tiny_tokenizer: HFTokenizer) -> None:
    text = "😀" * 400
    fixed = prompt_tokens(tiny_tokenizer, "")
    builder = PromptBuilder(tiny_tokenizer, context_window=fixed + 41, max_new_tokens=1)
    built = builder.build(system_prompt="", history=[Turn(role="user", text=text)])
    kept = built.prompt_text[len(HEAD) : -len(TAIL)]
    assert kept == "😀" * len(kept) and len(kept) >= 9  # 4 byte tokens each: 40 tokens of room
