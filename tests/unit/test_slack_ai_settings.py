"""The settings of Slack's AI-app surface (bot/settings.py): SOLARBOT_SLACK_STREAMING,
SOLARBOT_SLACK_ASSISTANT and SOLARBOT_SLACK_SUGGESTED_PROMPTS, and how the service hands them
(with the first handoff keyword, for the "Talk to a human" button) to the Slack adapter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import texts
from bot.errors import ConfigError
from bot.service import slack_options
from bot.settings import (
    SUGGESTED_PROMPT_TITLE_CHARS,
    SUGGESTED_PROMPTS_MAX,
    load_settings,
)

TOKEN = {"SOLARBOT_SLACK_BOT_TOKEN": "xoxb-1"}


def test_defaults_stream_natively_with_the_assistant_and_its_default_prompts() -> None:
    settings = load_settings(environ={})
    assert settings.slack_streaming == "native" and settings.slack_assistant is True
    assert settings.slack_suggested_prompts == texts.SLACK_SUGGESTED_PROMPTS
    assert 1 <= len(texts.SLACK_SUGGESTED_PROMPTS) <= SUGGESTED_PROMPTS_MAX
    options = slack_options(load_settings(environ=TOKEN), ingress=False, model_id="m")
    assert options.streaming == "native" and options.assistant
    assert options.suggested_prompts == texts.SLACK_SUGGESTED_PROMPTS
    assert options.handoff_keyword == "talk to a human"  # the first SOLARBOT_HANDOFF_KEYWORDS


def test_prompts_are_title_equals_message_pairs_and_a_bare_prompt_is_its_own_title() -> None:
    environ = {
        **TOKEN,
        "SOLARBOT_SLACK_SUGGESTED_PROMPTS": " Deploy = How do I deploy? | What is 2+2? |",
        "SOLARBOT_SLACK_STREAMING": "edit",
        "SOLARBOT_SLACK_ASSISTANT": "false",
        "SOLARBOT_HANDOFF_KEYWORDS": "",
    }
    settings = load_settings(environ=environ)
    assert settings.slack_suggested_prompts == (
        ("Deploy", "How do I deploy?"),
        ("What is 2+2?", "What is 2+2?"),
    )
    options = slack_options(settings, ingress=False, model_id="m")
    assert options.streaming == "edit" and not options.assistant
    assert options.handoff_keyword == ""  # handoff off: no "Talk to a human" button
    assert (
        load_settings(environ={"SOLARBOT_SLACK_SUGGESTED_PROMPTS": ""}).slack_suggested_prompts
        == ()
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SOLARBOT_SLACK_STREAMING", "websocket"),
        ("SOLARBOT_SLACK_ASSISTANT", "perhaps"),
        ("SOLARBOT_SLACK_SUGGESTED_PROMPTS", "a|b|c|d|e"),
        ("SOLARBOT_SLACK_SUGGESTED_PROMPTS", "=message without a title"),
        ("SOLARBOT_SLACK_SUGGESTED_PROMPTS", "title without a message="),
        ("SOLARBOT_SLACK_SUGGESTED_PROMPTS", "t" * (SUGGESTED_PROMPT_TITLE_CHARS + 1) + "=m"),
        ("SOLARBOT_SLACK_SUGGESTED_PROMPTS", "t=" + "m" * 2001),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={key: value})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "\n" not in message


_text = st.text(
    alphabet=st.characters(blacklist_characters="|=", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s)


@given(prompts=st.lists(st.tuples(_text, _text), min_size=1, max_size=SUGGESTED_PROMPTS_MAX))
def test_written_prompts_read_back_as_written(prompts: list[tuple[str, str]]) -> None:
    value = " | ".join(f"{title} = {message}" for title, message in prompts)
    settings = load_settings(environ={"SOLARBOT_SLACK_SUGGESTED_PROMPTS": value})
    assert settings.slack_suggested_prompts == tuple(prompts)
