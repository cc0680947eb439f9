"""``/mode`` in the terminal: every line is answered there already, so the console says so and
changes nothing (the real console adapter inside the whole service)."""

from __future__ import annotations

from pathlib import Path

from bot import texts
from tests.support.console_rig import chat, stored


async def test_mode_in_the_console_says_every_line_is_answered_already(tmp_path: Path) -> None:
    output, engine = await chat(tmp_path, "/mode auto\n/mode\nhello\n/status\n")
    assert output.count(texts.MODE_NOT_HERE) == 2
    assert "Mode: mention" in output  # /status: the setting was not changed
    assert stored(tmp_path, "general") == ["hello", "You said: hello"]
    assert len(engine.requests) == 1
