"""Per-channel reply settings (issue 7): parsing the sub-commands, capping a reply at a word,
migration 0003 up and down, and partial updates of a channel's settings on SQLite and PostgreSQL.
The platforms' end-to-end tests (admins change them from chat, threads inherit them, the next
prompt follows them) are in tests/platforms/test_slack.py and tests/platforms/test_discord.py."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from bot.commands import CommandName, ParsedCommand, parse_command, parse_prefixed
from bot.records import ChannelConfig, Incoming
from bot.splitting import truncate_at_word
from storage import database
from storage.repository import Repository

NEW_COLUMNS = {"max_reply_chars", "language"}
WHERE = {"platform": "slack", "workspace": "T1", "channel": "C1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on", ParsedCommand(CommandName.ON)),
        ("OFF", ParsedCommand(CommandName.OFF)),
        ("length 500", ParsedCommand(CommandName.LENGTH, "500")),
        ("length 1,500", ParsedCommand(CommandName.LENGTH, "1,500")),
        ("length reset", ParsedCommand(CommandName.LENGTH, "reset")),
        ("length", ParsedCommand(CommandName.LENGTH, "")),
        ("language German", ParsedCommand(CommandName.LANGUAGE, "German")),
        (
            "language Brazilian Portuguese",
            ParsedCommand(CommandName.LANGUAGE, "Brazilian Portuguese"),
        ),
        ("language", ParsedCommand(CommandName.LANGUAGE, "")),
        # Questions that start with those words stay questions.
        ("on what day is Easter?", ParsedCommand(CommandName.ASK, "on what day is Easter?")),
        ("length of the Nile?", ParsedCommand(CommandName.ASK, "length of the Nile?")),
        ("language models: why?", ParsedCommand(CommandName.ASK, "language models: why?")),
        ("language of the birds", ParsedCommand(CommandName.ASK, "language of the birds")),
    ],
)
def test_parse_the_setting_commands(text: str, expected: ParsedCommand) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what is SOLAR?", None),
        ("!", None),
        ("!status", ParsedCommand(CommandName.STATUS)),
        ("!Status please", ParsedCommand(CommandName.STATUS)),
        ("!prompt Be brief. ", ParsedCommand(CommandName.PROMPT, "Be brief.")),
        ("!length 40", ParsedCommand(CommandName.LENGTH, "40")),
        ("!language Klingon 2", ParsedCommand(CommandName.LANGUAGE, "Klingon 2")),  # refused later
        ("!frobnicate now", ParsedCommand(CommandName.UNKNOWN, "frobnicate")),
    ],
)
def test_parse_prefixed_commands(text: str, expected: ParsedCommand | None) -> None:
    assert parse_prefixed(text) == expected


def test_truncate_at_word() -> None:
    assert truncate_at_word("short enough", 12) == "short enough"
    assert truncate_at_word("one two three four", 12) == "one two…"
    assert truncate_at_word("one two three four", 14) == "one two three…"  # boundary fits exactly
    assert truncate_at_word("abcdefghijklmnopqrstuvwxyz", 10) == "abcdefghi…"  # one long word
    for limit in range(1, 40):
        text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit."
        cut = truncate_at_word(text, limit)
        assert len(cut) <= limit and cut.endswith("…")
        assert text.startswith(cut.removesuffix("…").rstrip())


def test_migration_0003_adds_reply_settings_keeps_channels_and_goes_down(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine, revision="0002")
        assert not NEW_COLUMNS & {
            c["name"] for c in inspect(engine).get_columns("channel_settings")
        }
        # A channel configured before the upgrade, written as 0002's code wrote it.
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO channel_settings (platform, workspace, channel, system_prompt, "
                "enabled, updated_at) VALUES ('slack', 'T1', 'C1', 'Old.', false, "
                "'2026-11-01 00:00:00')"
            )

        database.upgrade(engine, revision="0003")
        assert database.current_revision(engine) == "0003"
        # Read and written as 0003's code did (today's repository needs later columns too).
        with engine.begin() as connection:
            before = connection.exec_driver_sql(
                "SELECT system_prompt, enabled, max_reply_chars, language FROM channel_settings"
            ).all()
            connection.exec_driver_sql(
                "UPDATE channel_settings SET max_reply_chars = 99, enabled = true"
            )
        assert [(p, bool(e), m, lang) for p, e, m, lang in before] == [("Old.", False, None, None)]

        database.downgrade(engine, "0002")
        assert not NEW_COLUMNS & {
            c["name"] for c in inspect(engine).get_columns("channel_settings")
        }
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT system_prompt, enabled FROM channel_settings"
            ).all()
        assert [(prompt, bool(enabled)) for prompt, enabled in rows] == [("Old.", True)]
        database.upgrade(engine)
        assert Repository(engine).channel_config(**WHERE).max_reply_chars is None
    finally:
        engine.dispose()


def test_update_changes_only_the_given_settings(repository: Repository) -> None:
    assert repository.channel_config(**WHERE) == ChannelConfig()
    first = repository.update_channel_config(**WHERE, changes={"language": "German"})
    assert first == ChannelConfig(language="German")
    repository.update_channel_config(**WHERE, changes={"max_reply_chars": 500})
    repository.update_channel_config(**WHERE, changes={"system_prompt": "Be brief."})
    final = repository.update_channel_config(**WHERE, changes={"enabled": False})
    assert final == ChannelConfig(
        system_prompt="Be brief.", enabled=False, max_reply_chars=500, language="German"
    )
    other = {**WHERE, "channel": "C2"}
    assert repository.channel_config(**other) == ChannelConfig()  # other channels untouched
    with pytest.raises(ValueError, match="colour"):
        repository.update_channel_config(**WHERE, changes={"colour": "red"})


def test_claimed_jobs_of_a_thread_carry_their_channels_settings(repository: Repository) -> None:
    repository.update_channel_config(**WHERE, changes={"max_reply_chars": 80, "language": "French"})
    thread = Incoming(
        platform="slack",
        workspace="T1",
        channel="C1",
        thread="111.1",
        author_id="u",
        text="hi",
        message_id="t1",
    )
    assert repository.enqueue(thread) is not None
    [job] = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert job.conversation.thread == "111.1"
    assert (job.max_reply_chars, job.language) == (80, "French")
