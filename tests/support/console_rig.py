"""The console inside the whole service, driven like a person at a terminal: ``chat`` types lines
into the real console adapter (through a pipe) of a service on a real SQLite file and the fake
engine, and returns what the screen showed; ``stored`` reads a console channel's history."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from adapters.console import ConsoleAdapter, ConsoleOptions
from bot.generation.fake import FakeEngine
from bot.records import ConversationKey
from bot.service import Service
from bot.settings import load_settings
from storage.repository import Repository

DEFAULT_PROMPT = "You are a terse test assistant."


async def chat(
    data_dir: Path, lines: str, *, after: dict[str, str] | None = None
) -> tuple[str, FakeEngine]:
    """``lines`` typed into the console of a whole service (as `solarbot chat` runs it). ``after``:
    a line is typed only once the output shows the given text (a person waiting for an answer)."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(data_dir),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_TEMPERATURE": "0",
            "SOLARBOT_SYSTEM_PROMPT": DEFAULT_PROMPT,
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    engine = FakeEngine(delay_per_chunk=0.001)
    output = io.StringIO()
    read_end, write_end = os.pipe()
    keyboard = os.fdopen(write_end, "w")

    async def type_lines() -> None:
        for line in lines.splitlines(keepends=True):
            awaited = (after or {}).get(line.rstrip("\n"))
            while awaited is not None and awaited not in output.getvalue():
                await asyncio.sleep(0.01)
            keyboard.write(line)
            keyboard.flush()
        keyboard.close()  # Ctrl-D

    with os.fdopen(read_end) as screen_input:
        console = ConsoleAdapter(
            ConsoleOptions(
                input_stream=screen_input,
                output_stream=output,
                interactive=False,
                author="ada",
                model_id="fake-solar",
                default_system_prompt=settings.system_prompt,
            )
        )
        service = Service(
            settings=settings, repository=repository, engine=engine, adapters=[console]
        )
        typing = asyncio.create_task(type_lines())
        session = asyncio.create_task(service.console_session(console))
        async with asyncio.timeout(30):
            await service.run()
        await session
        await typing
    repository.close()
    return output.getvalue(), engine


def stored(data_dir: Path, channel: str) -> list[str]:
    repository = Repository.open(f"sqlite:///{data_dir.resolve() / 'solarbot.db'}")
    try:
        key = ConversationKey(platform="console", channel=channel)
        return [m.text for m in repository.messages(key)]
    finally:
        repository.close()
