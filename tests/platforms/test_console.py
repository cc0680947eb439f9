"""The console adapter through the whole service: intake -> SQLite -> worker -> engine -> stdout."""

from __future__ import annotations

import asyncio
import io
import os
import re
from pathlib import Path
from typing import TextIO

from adapters.console import ConsoleAdapter, ConsoleOptions
from bot import texts
from bot.generation.fake import FakeEngine
from bot.records import ConversationKey
from bot.service import Service
from bot.settings import load_settings
from storage.repository import Repository


async def chat(
    data_dir: Path,
    lines: str | TextIO,
    *,
    engine: FakeEngine | None = None,
    interactive: bool = False,
    wait_for_model: bool = False,
    output: io.StringIO | None = None,
) -> tuple[str, FakeEngine]:
    """``lines`` typed into the console of a whole service (as `solarbot chat` runs it)."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(data_dir),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_TEMPERATURE": "0",
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    engine = engine or FakeEngine(delay_per_chunk=0.001)
    output = output if output is not None else io.StringIO()
    console = ConsoleAdapter(
        ConsoleOptions(
            input_stream=io.StringIO(lines) if isinstance(lines, str) else lines,
            output_stream=output,
            interactive=interactive,
            wait_for_model=wait_for_model,
        )
    )
    service = Service(settings=settings, repository=repository, engine=engine, adapters=[console])
    session = asyncio.create_task(service.console_session(console))
    async with asyncio.timeout(30):
        await service.run()
    await session
    repository.close()
    return output.getvalue(), engine


def stored(data_dir: Path, channel: str) -> list[tuple[str, str]]:
    repository = Repository.open(f"sqlite:///{data_dir.resolve() / 'solarbot.db'}")
    try:
        key = ConversationKey(platform="console", channel=channel)
        return [(m.role.value, m.text) for m in repository.messages(key)]
    finally:
        repository.close()


async def test_a_line_typed_gets_a_streamed_reply_that_is_printed_and_stored(
    tmp_path: Path,
) -> None:
    output, _ = await chat(tmp_path, "hello there\n")
    assert output == "solarbot [#general]: You said: hello there\n"
    assert stored(tmp_path, "general") == [
        ("user", "hello there"),
        ("assistant", "You said: hello there"),
    ]


async def test_channels_keep_separate_histories_and_survive_a_restart(tmp_path: Path) -> None:
    await chat(tmp_path, "one\n/channel ops\nin ops\n")
    output, engine = await chat(tmp_path, "two\n")  # a new process would see the same database
    assert output.endswith("solarbot [#general]: You said: two\n")
    # After the restart the prompt still carries the earlier turns of #general, not those of #ops.
    assert "### User:\none\n\n### Assistant:\nYou said: one### User:\ntwo\n\n" in engine.prompts[0]
    assert "in ops" not in engine.prompts[0]
    assert [text for _, text in stored(tmp_path, "general")] == [
        "one",
        "You said: one",
        "two",
        "You said: two",
    ]
    assert [text for _, text in stored(tmp_path, "ops")] == ["in ops", "You said: in ops"]


async def test_commands_are_not_sent_to_the_model(tmp_path: Path) -> None:
    output, engine = await chat(tmp_path, "/help\n/bogus\n\n   \n/quit\nnot sent\n")
    assert "/channel NAME" in output and "I don't know `/bogus`" in output
    assert engine.requests == [] and stored(tmp_path, "general") == []


async def test_end_of_input_waits_for_every_pending_reply(tmp_path: Path) -> None:
    lines = "".join(f"message {n}\n" for n in range(5))
    output, _ = await chat(tmp_path, lines, engine=FakeEngine(delay_per_chunk=0.02))
    replies = [line for line in output.splitlines() if line.startswith("solarbot")]
    assert replies == [f"solarbot [#general]: You said: message {n}" for n in range(5)]


async def test_a_person_at_the_terminal_is_told_the_model_is_loading_then_ready(
    tmp_path: Path,
) -> None:
    output, _ = await chat(
        tmp_path,
        "typed while loading\n",
        engine=FakeEngine(start_delay=0.3),  # a model that takes a moment to load
        interactive=True,
        wait_for_model=True,
    )
    lines = output.split("\n")
    assert lines[0] == texts.CONSOLE_BANNER
    assert lines[1] == texts.CONSOLE_LOADING  # no prompt while the model loads
    assert re.fullmatch(r"Model fake ready \(0\.[3-9]\d* s\)\.", lines[2]), lines[2]
    # The question typed during the load was kept and is answered once the model is ready (no
    # prompt before it: the input has already ended).
    assert lines[3] == "solarbot [#general]: You said: typed while loading"
    assert stored(tmp_path, "general")[-1] == ("assistant", "You said: typed while loading")


async def test_an_answer_to_a_question_typed_while_loading_is_not_printed_after_a_prompt(
    tmp_path: Path,
) -> None:
    """The person is still at the terminal (input open): the answer to what they typed during the
    load comes first, then the prompt."""
    read_end, write_end = os.pipe()
    typing = os.fdopen(write_end, "w")
    typing.write("typed while loading\n")
    typing.flush()
    output = io.StringIO()

    async def leave_after_the_answer() -> None:
        while "You said: typed while loading\n" not in output.getvalue():
            await asyncio.sleep(0.01)
        typing.close()  # Ctrl-D

    leaving = asyncio.create_task(leave_after_the_answer())
    with os.fdopen(read_end) as keyboard:
        await chat(
            tmp_path,
            keyboard,
            engine=FakeEngine(start_delay=0.3),
            interactive=True,
            wait_for_model=True,
            output=output,
        )
    await leaving
    lines = output.getvalue().split("\n")
    assert lines[1:] == [
        texts.CONSOLE_LOADING,
        lines[2],  # Model fake ready (...).
        "solarbot [#general]: You said: typed while loading",
        "you [#general]> ",
    ]
    assert lines[2].startswith("Model fake ready (")
