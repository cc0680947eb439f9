"""The whole path with the real engine: console -> SQLite -> worker -> TransformersEngine (the tiny
SOLAR-shaped model on CPU, loaded by the production loading code) -> reply printed and stored."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.console import ConsoleAdapter, ConsoleOptions
from bot.conversation import PromptBuilder, Turn
from bot.generation.loading import HFTokenizer
from bot.generation.local import TransformersEngine
from bot.records import ConversationKey, JobStatus
from bot.service import Service, build_engine
from bot.settings import Settings, load_settings
from storage.repository import Repository
from tests.support.processes import solarbot

MAX_NEW_TOKENS = 12


def settings_for(model_dir: Path, data_dir: Path) -> Settings:
    return load_settings(
        environ={
            "SOLARBOT_MODEL": str(model_dir),
            "SOLARBOT_DEVICE": "cpu",
            "SOLARBOT_DATA_DIR": str(data_dir),
            "SOLARBOT_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
            "SOLARBOT_TEMPERATURE": "0",
            "SOLARBOT_CONTEXT_WINDOW": "512",
            "SOLARBOT_SYSTEM_PROMPT": "You are a test.",
        }
    )


@pytest.fixture(scope="module")
def reference(tiny_tokenizer: HFTokenizer, greedy_text: Callable[[list[int], int], str]) -> Any:
    """The engine's expected reply to a history: our prompt, then plain greedy ``generate``."""
    builder = PromptBuilder(tiny_tokenizer, context_window=512, max_new_tokens=MAX_NEW_TOKENS)

    def expected(history: list[tuple[str, str]]) -> str:
        turns = [Turn(role=role, text=text) for role, text in history]  # type: ignore[arg-type]
        prompt = builder.build(system_prompt="You are a test.", history=turns).prompt_ids
        return greedy_text(prompt, MAX_NEW_TOKENS)

    return expected


async def run_console(settings: Settings, lines: str) -> str:
    repository = Repository.open(settings.resolved_database_url())
    output = io.StringIO()
    console = ConsoleAdapter(
        ConsoleOptions(input_stream=io.StringIO(lines), output_stream=output, interactive=False)
    )
    service = Service(
        settings=settings, repository=repository, engine=build_engine(settings), adapters=[console]
    )
    watcher = asyncio.create_task(service.stop_when_console_done(console))
    async with asyncio.timeout(120):
        await service.run()
    await watcher
    repository.close()
    return output.getvalue()


def conversation(settings: Settings, channel: str) -> list[tuple[str, str]]:
    repository = Repository.open(settings.resolved_database_url())
    try:
        key = ConversationKey(platform="console", channel=channel)
        return [(m.role.value, m.text) for m in repository.messages(key)]
    finally:
        repository.close()


async def test_console_to_model_and_back_with_history_across_a_restart(
    tiny_model_dir: Path, tmp_path: Path, reference: Any
) -> None:
    settings = settings_for(tiny_model_dir, tmp_path)
    assert isinstance(build_engine(settings), TransformersEngine)

    output = await run_console(settings, "Hello, who are you?\n")
    first = reference([("user", "Hello, who are you?")])
    assert first.strip(), "the tiny model produced nothing to compare"
    assert output == f"solarbot [#general]: {first}\n"
    assert conversation(settings, "general") == [
        ("user", "Hello, who are you?"),
        ("assistant", first),
    ]

    # A restart: a new service over the same database still has the history in its prompt.
    output = await run_console(settings, "And what now?\n")
    second = reference(
        [("user", "Hello, who are you?"), ("assistant", first), ("user", "And what now?")]
    )
    assert output == f"solarbot [#general]: {second}\n"
    assert [text for _, text in conversation(settings, "general")] == [
        "Hello, who are you?",
        first,
        "And what now?",
        second,
    ]


async def test_several_channels_at_once_are_batched_and_kept_apart(
    tiny_model_dir: Path, tmp_path: Path, reference: Any
) -> None:
    settings = settings_for(tiny_model_dir, tmp_path)
    lines = "".join(f"/channel c{n}\nquestion number {n}\n" for n in range(4))
    output = await run_console(settings, lines)
    for n in range(4):
        expected = reference([("user", f"question number {n}")])
        assert f"solarbot [#c{n}]: {expected}\n" in output
        assert conversation(settings, f"c{n}") == [
            ("user", f"question number {n}"),
            ("assistant", expected),
        ]


def test_solarbot_chat_subprocess_with_the_real_engine(
    tiny_model_dir: Path, tmp_path: Path, reference: Any
) -> None:
    env = {
        "SOLARBOT_MODEL": str(tiny_model_dir),
        "SOLARBOT_DEVICE": "cpu",
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
        "SOLARBOT_TEMPERATURE": "0",
        "SOLARBOT_CONTEXT_WINDOW": "512",
        "SOLARBOT_SYSTEM_PROMPT": "You are a test.",
    }
    result = solarbot("chat", env=env, stdin="Hello, who are you?\n", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the defaults raise no warning on a CPU (dtype auto: float32)
    assert result.stdout == f"solarbot [#general]: {reference([('user', 'Hello, who are you?')])}\n"
    repository = Repository.open(f"sqlite:///{tmp_path.resolve() / 'solarbot.db'}")
    assert [job.status for job in repository.jobs()] == [JobStatus.DONE]
    repository.close()
