"""Chat sub-commands (bot/commands.py) against a real SQLite repository, no platform involved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.commands import (
    MAX_SYSTEM_PROMPT_CHARS,
    CommandContext,
    CommandName,
    Commands,
    ParsedCommand,
    parse_command,
)
from bot.records import ChannelConfig, ConversationKey, Incoming
from storage.repository import Repository

DEFAULT_PROMPT = "You are a test bot."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ParsedCommand(CommandName.HELP)),
        ("   help ", ParsedCommand(CommandName.HELP)),
        ("STATUS", ParsedCommand(CommandName.STATUS)),
        ("forget", ParsedCommand(CommandName.FORGET)),
        ("prompt", ParsedCommand(CommandName.PROMPT, "")),
        ("prompt  Be brief.  ", ParsedCommand(CommandName.PROMPT, "Be brief.")),
        ("what is SOLAR?", ParsedCommand(CommandName.ASK, "what is SOLAR?")),
        # A question that merely starts with a sub-command word is still a question.
        ("help me write a poem", ParsedCommand(CommandName.ASK, "help me write a poem")),
        ("forget the past?", ParsedCommand(CommandName.ASK, "forget the past?")),
        ("ask prompt engineering tips", ParsedCommand(CommandName.ASK, "prompt engineering tips")),
        ("--private why?", ParsedCommand(CommandName.ASK, "why?", private=True)),
        ("-p ask status", ParsedCommand(CommandName.ASK, "status", private=True)),
        ("--private", ParsedCommand(CommandName.HELP)),
    ],
)
def test_parse_command(text: str, expected: ParsedCommand) -> None:
    assert parse_command(text) == expected


@pytest.fixture
def repo(sqlite_url: str) -> Iterator[Repository]:
    repository = Repository.open(sqlite_url)
    yield repository
    repository.close()


def commands(repo: Repository) -> Commands:
    return Commands(
        repo,
        command="/solar",
        model_id="upstage/SOLAR-10.7B-Instruct-v1.0",
        default_system_prompt=DEFAULT_PROMPT,
        admin_setting="SOLARBOT_SLACK_ADMIN_USERS",
    )


def context(*, is_admin: bool = False, admins: bool = True, channel: str = "C1") -> CommandContext:
    return CommandContext(
        platform="slack",
        workspace="T1",
        channel=channel,
        user_id="U1",
        is_admin=is_admin,
        admins_configured=admins,
    )


def store(repo: Repository, channel: str, thread: str = "", n: int = 1) -> None:
    for i in range(n):
        repo.enqueue(
            Incoming(
                platform="slack",
                workspace="T1",
                channel=channel,
                thread=thread,
                author_id="U1",
                text=f"message {i}",
                message_id=f"{channel}-{thread}-{i}",
            )
        )


def stored(repo: Repository, channel: str, thread: str = "") -> int:
    key = ConversationKey(platform="slack", workspace="T1", channel=channel, thread=thread)
    return len(repo.messages(key))


async def test_forget_is_admins_only_when_admins_are_configured(repo: Repository) -> None:
    store(repo, "C1", n=2)
    store(repo, "C1", thread="111.1")
    store(repo, "C2")
    refused = await commands(repo).run(ParsedCommand(CommandName.FORGET), context())
    assert "only admins" in refused and stored(repo, "C1") == 2

    done = await commands(repo).run(ParsedCommand(CommandName.FORGET), context(is_admin=True))
    assert "3 message(s)" in done  # the channel and its threads; other channels untouched
    assert stored(repo, "C1") == 0 and stored(repo, "C1", "111.1") == 0 and stored(repo, "C2") == 1


async def test_forget_is_open_to_everyone_when_no_admins_are_configured(
    repo: Repository,
) -> None:
    store(repo, "C1")
    done = await commands(repo).run(ParsedCommand(CommandName.FORGET), context(admins=False))
    assert "forgot" in done and stored(repo, "C1") == 0


async def test_prompt_set_show_reset_and_limits(repo: Repository) -> None:
    run = commands(repo).run
    shown = await run(ParsedCommand(CommandName.PROMPT), context())
    assert "default system prompt" in shown and DEFAULT_PROMPT in shown

    refused = await run(ParsedCommand(CommandName.PROMPT, "Be a pirate."), context())
    assert "only admins" in refused
    nobody = await run(ParsedCommand(CommandName.PROMPT, "Be a pirate."), context(admins=False))
    assert "SOLARBOT_SLACK_ADMIN_USERS" in nobody
    assert repo.channel_config(platform="slack", workspace="T1", channel="C1") == ChannelConfig()

    admin = context(is_admin=True)
    assert "now" in await run(ParsedCommand(CommandName.PROMPT, "Be a pirate.\nArr."), admin)
    config = repo.channel_config(platform="slack", workspace="T1", channel="C1")
    assert config.system_prompt == "Be a pirate.\nArr."
    assert "> Be a pirate.\n> Arr." in await run(ParsedCommand(CommandName.PROMPT), context())

    too_long = "x" * (MAX_SYSTEM_PROMPT_CHARS + 1)
    assert "too long" in await run(ParsedCommand(CommandName.PROMPT, too_long), admin)
    assert "default" in await run(ParsedCommand(CommandName.PROMPT, "reset"), admin)
    assert repo.channel_config(platform="slack", workspace="T1", channel="C1").system_prompt is None


async def test_status_shows_model_queue_and_channel_settings(repo: Repository) -> None:
    store(repo, "C1", n=2)
    repo.set_channel_config(
        platform="slack",
        workspace="T1",
        channel="C1",
        config=ChannelConfig(system_prompt="Short.", enabled=True),
    )
    status = await commands(repo).run(ParsedCommand(CommandName.STATUS), context(admins=False))
    assert "upstage/SOLAR-10.7B-Instruct-v1.0" in status
    assert "**Queue:** 2 question(s)" in status
    assert "custom system prompt (6 characters)" in status and "replies on" in status
    assert "none configured" in status


def test_help_lists_every_sub_command(repo: Repository) -> None:
    text = commands(repo).help(context())
    for word in ("/solar QUESTION", "--private", "help", "status", "forget", "prompt"):
        assert word in text
    assert "(admins only)" in text
    assert "(admins only)" not in commands(repo).help(context(admins=False)).split("prompt")[0]


async def test_a_question_is_not_a_sub_command(repo: Repository) -> None:
    with pytest.raises(ValueError, match="intake"):
        await commands(repo).run(ParsedCommand(CommandName.ASK, "hi"), context())


HOSTILE_CHARS = "\u202e\u2066\x1b[2J\x00\u200b"


@pytest.mark.parametrize(
    "parsed",
    [
        ParsedCommand(CommandName.UNKNOWN, f"evil{HOSTILE_CHARS}word"),
        ParsedCommand(CommandName.PROMPT, f"Be brief.{HOSTILE_CHARS}"),
        ParsedCommand(CommandName.LANGUAGE, f"Fr{HOSTILE_CHARS}ench"),
        ParsedCommand(CommandName.HELP),
    ],
)
async def test_command_replies_are_cleaned_like_every_post(
    repo: Repository, parsed: ParsedCommand
) -> None:
    """A sub-command's answer may echo what someone typed (an unknown word, a prompt shown back):
    it leaves with no control, zero-width or bidi-override character, like every reply."""
    bot = commands(repo)
    answer = await bot.run(parsed, context(is_admin=True))
    if parsed.name is CommandName.PROMPT:  # shown back by the next ``prompt``
        answer += await bot.run(ParsedCommand(CommandName.PROMPT, ""), context(is_admin=True))
    assert answer
    assert not any(char in answer for char in HOSTILE_CHARS if char not in "[2J")
