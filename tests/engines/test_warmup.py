"""Warm-up progress: a bar for a person at a terminal, log lines for everybody else.

The engines' warm-up (torch.compile of the decode step, CUDA-graph capture, transformers'
``manager.warmup()``) runs before ``start()`` returns. The compile phase runs on a CPU too, so it is
tested here for real: in-process (progress logged, no bar where bars are off, greedy output of the
compiled step still equals ``generate``) and through ``solarbot chat`` with stderr on a real
pseudo-terminal (the bar is drawn there). CUDA-graph capture goes through the same class on a GPU
(bench/gpu_session.sh checks it there).
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.generation.loading import HFTokenizer
from bot.generation.options import LocalEngineOptions
from bot.generation.static import StaticCacheEngine
from bot.generation.warmup import WarmupProgress
from bot.logs import configure_progress_bars, progress_bars_enabled
from tests.support.engine_support import collect, make_request, prompt_ids
from tests.support.processes import ROOT, clean_env

LOGGER = "bot.generation.warmup"


@pytest.fixture
def bars_off() -> Iterator[None]:
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    before = (progress_bars_enabled(), not are_progress_bars_disabled())
    before_hf = hf_logging.is_progress_bar_enabled()
    configure_progress_bars(False)
    yield
    configure_progress_bars(before[0])
    from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if before[1] else disable_progress_bars)()
    (hf_logging.enable_progress_bar if before_hf else hf_logging.disable_progress_bar)()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_terminal_gets_a_bar_and_the_log_the_start_and_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = io.StringIO()
    with WarmupProgress("capturing graphs", total=3, unit="graph", bar=True, stream=stream) as p:
        for _ in range(3):
            p.advance()
    drawn = stream.getvalue()
    assert "capturing graphs: 100%" in drawn and "3/3" in drawn
    logged = messages(caplog)
    assert logged[0] == "warm-up: capturing graphs (3 graphs)"
    assert re.fullmatch(r"warm-up: capturing graphs done, 3/3 graphs in \d+\.\d s", logged[-1])


def test_no_bar_where_progress_bars_are_off(
    bars_off: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = io.StringIO()
    with WarmupProgress("compiling", total=2, stream=stream) as progress:
        progress.advance(2)
    assert stream.getvalue() == ""
    assert messages(caplog)[-1].startswith("warm-up: compiling done, 2/2 steps in ")


def test_a_long_silent_step_keeps_the_clock_moving_and_the_log_talking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = io.StringIO()
    with (
        WarmupProgress("warming up", total=1, bar=True, stream=stream, log_every_s=0.5) as p,
        p.waiting(),
    ):
        time.sleep(1.3)  # the one opaque call (transformers' manager.warmup())
        during = stream.getvalue()
        p.advance()
    assert "0/1 [00:01<" in during  # redrawn while nothing advanced
    assert "warm-up: warming up, 0/1 steps after 1 s" in messages(caplog)
    assert not any(t.name == "solarbot-warmup-progress" for t in threading.enumerate())


def test_logging_alone_also_reports_a_long_silent_step(
    bars_off: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with WarmupProgress("warming up", total=1, log_every_s=0.2) as p, p.waiting():
        time.sleep(0.7)
        p.advance()
    still = [m for m in messages(caplog) if m.startswith("warm-up: warming up, 0/1 steps after")]
    assert len(still) >= 2


def test_a_failed_phase_says_where_it_stopped_and_the_error_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    stream = io.StringIO()
    with (
        pytest.raises(RuntimeError, match="capture failed"),
        WarmupProgress("capturing", total=3, unit="graph", bar=True, stream=stream) as progress,
    ):
        progress.advance()
        raise RuntimeError("capture failed")
    assert re.fullmatch(
        r"warm-up: capturing stopped after 1/3 graphs \(\d+\.\d s\): RuntimeError",
        messages(caplog)[-1],
    )
    assert "1/3" in stream.getvalue()


@pytest.mark.slow
async def test_compiled_decode_step_warms_up_with_progress_and_still_equals_generate(
    bars_off: None,
    tiny_model_dir: Path,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    engine = StaticCacheEngine(
        LocalEngineOptions(
            model=str(tiny_model_dir), device="cpu", max_active_requests=4, compile_decode=True
        )
    )
    await engine.start()
    try:
        assert engine.compiled and engine.compile_error is None
        logged = messages(caplog)
        assert logged[0] == "warm-up: compiling the decode step (2 shapes)"
        assert logged[-1].startswith("warm-up: compiling the decode step done, 2/2 shapes in ")
        assert "compiling the decode step" not in capsys.readouterr().err  # no bar: bars are off
        texts = ["Tell me a story about the sun.", "What is 2 + 2?", "Write a haiku " * 4]
        prompts = [prompt_ids(tiny_tokenizer, text) for text in texts]
        replies = await asyncio.gather(*(collect(engine, make_request(p, 16)) for p in prompts))
        assert ["".join(r) for r in replies] == [greedy_text(p, 16) for p in prompts]
    finally:
        await engine.close()


@pytest.mark.slow
def test_solarbot_chat_on_a_terminal_shows_the_warm_up_bar(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = clean_env(
        {
            "SOLARBOT_MODEL": str(tiny_model_dir),
            "SOLARBOT_ENGINE": "static",
            "SOLARBOT_COMPILE_LEVEL": "1",
            "SOLARBOT_DEVICE": "cpu",
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_MAX_NEW_TOKENS": "8",
            "SOLARBOT_TEMPERATURE": "0",
            "SOLARBOT_CONTEXT_WINDOW": "512",
        }
    )
    terminal, stderr = pty.openpty()  # stderr is a terminal; stdin and stdout are pipes
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 x 120
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        cwd=ROOT,
    )
    os.close(stderr)
    seen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child closed its side
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(b"Hello there\n", timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
        os.close(terminal)
    shown = seen.decode(errors="replace")
    assert process.returncode == 0, shown
    assert re.search(r"compiling the decode step: 100%\|.*\| 2/2 \[", shown), shown
    assert stdout.decode().startswith("solarbot [#general]: ")
