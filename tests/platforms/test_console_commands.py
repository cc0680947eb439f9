"""The console speaks the chat sub-commands of Slack and Discord (``bot.commands``): the real
console adapter inside the whole service, a real SQLite file and the fake engine."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from adapters.console import for_terminal
from bot import texts
from bot.commands import CommandName
from tests.support.console_rig import DEFAULT_PROMPT, chat, stored


async def test_status_answers_with_the_model_the_queue_and_the_channel(tmp_path: Path) -> None:
    output, engine = await chat(tmp_path, "/status\n")
    assert "Unknown command" not in output and "I don't know" not in output
    assert "Model: fake-solar" in output
    assert "Queue: 0 question(s)" in output
    assert "This channel: default system prompt; replies on" in output
    assert "**" not in output  # Markdown bold is dropped on the terminal
    assert engine.requests == [] and stored(tmp_path, "general") == []


async def test_prompt_length_and_language_shape_the_next_answers_in_this_channel_only(
    tmp_path: Path,
) -> None:
    output, engine = await chat(
        tmp_path,
        "/prompt Speak like a pirate.\n/language German\n/length 40\n/prompt\n"
        "what is solar power, in great detail please?\n"
        "/channel ops\nhello ops\n",
    )
    assert "This channel's system prompt is now:\n> Speak like a pirate." in output
    assert "I now answer in German in this channel." in output
    assert "My replies in this channel now stop at 40 characters." in output
    assert "This channel's system prompt:\n> Speak like a pirate." in output
    general, ops = engine.prompts
    assert "Speak like a pirate." in general and "Answer in German." in general
    assert DEFAULT_PROMPT not in general
    # #ops keeps the defaults: settings belong to the channel they were typed in.
    assert DEFAULT_PROMPT in ops and "pirate" not in ops and "German" not in ops
    answer = stored(tmp_path, "general")[-1]
    assert len(answer) <= 40, answer


async def test_settings_typed_in_the_console_outlive_the_process(tmp_path: Path) -> None:
    await chat(tmp_path, "/prompt Always answer in haiku.\n")
    output, engine = await chat(tmp_path, "/status\nhello\n")
    assert 'custom system prompt (23 characters): "Always answer in haiku."' in output
    assert "Always answer in haiku." in engine.prompts[0]


async def test_off_silences_the_channel_and_on_brings_it_back(tmp_path: Path) -> None:
    output, engine = await chat(
        tmp_path, "/off\nignored?\n/status\n/on\nanswered\n", after={"/on": "replies off"}
    )
    assert texts.COMMAND_SWITCHED_OFF.format(command="", p="/").replace("` /", "`/") in output
    assert texts.CHANNEL_DISABLED in output  # the question typed while off is not lost silently
    assert "replies off" in output  # the admin's /status still works while off
    assert texts.COMMAND_SWITCHED_ON in output
    assert len(engine.requests) == 1 and "answered" in engine.prompts[0]
    assert stored(tmp_path, "general") == ["answered", "You said: answered"]


async def test_forget_clears_this_channels_history(tmp_path: Path) -> None:
    output, _ = await chat(
        tmp_path,
        "one\n/channel ops\ntwo\n/channel general\n/forget\n",
        after={"/forget": "You said: two"},
    )
    assert texts.COMMAND_FORGOT.format(count=2) in output
    assert stored(tmp_path, "general") == []
    assert stored(tmp_path, "ops") == ["two", "You said: two"]


async def test_resume_is_understood_even_with_nothing_to_resume(tmp_path: Path) -> None:
    output, _ = await chat(tmp_path, "/resume\n")
    assert texts.COMMAND_RESUME_NOTHING in output


async def test_help_lists_every_sub_command_as_typed_here_and_the_consoles_own(
    tmp_path: Path,
) -> None:
    output, _ = await chat(tmp_path, "/help\n")
    for name in ("help", "status", "forget", "prompt", "off", "on", "length", "language", "resume"):
        assert f"/{name}" in output, name
    assert "/channel NAME" in output and "/quit" in output
    assert re.search(r"(^|`) /", output, re.MULTILINE) is None  # no "** /status**" leftovers
    assert "**" not in output and "--private" not in output


async def test_every_sub_command_that_commands_knows_is_understood_by_the_console(
    tmp_path: Path,
) -> None:
    """The console routes every slash word it does not own to ``bot.commands``: a sub-command
    added there (``mode``, ``kb``) is understood here without touching the console."""
    names = [
        name.value for name in CommandName if name not in (CommandName.ASK, CommandName.UNKNOWN)
    ]
    output, engine = await chat(tmp_path, "".join(f"/{name}\n" for name in names))
    assert "I don't know" not in output, output
    assert engine.requests == []


async def test_an_unknown_word_gets_the_help_and_reaches_nobody(tmp_path: Path) -> None:
    output, engine = await chat(tmp_path, "/Status now\n/bogus\n")
    assert "I don't know `/status`" not in output  # case does not matter
    assert "I don't know `/bogus`. Here is what I know:" in output
    assert engine.requests == [] and stored(tmp_path, "general") == []


@given(word=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True))
def test_a_sub_command_is_always_named_as_it_is_typed_in_the_console(word: str) -> None:
    """Whatever word the templates name, the terminal shows ``/word`` with no stray space or bold,
    in a code span or in bold."""
    for markdown in (
        texts.COMMAND_UNKNOWN.format(command="", p="/", word=word, help=""),
        texts.COMMAND_ADMINS_ONLY.format(command="", p="/", name=word),
        f"**{'':s} /{word}**: text",
    ):
        shown = for_terminal(markdown)
        assert f"/{word}" in shown and f" /{word}" not in shown.replace(f"` /{word}", "")
        assert f"` /{word}" not in shown and "**" not in shown
