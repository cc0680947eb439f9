"""The OpenAI-compatible engine against a real `transformers serve` process on 127.0.0.1 serving the
tiny SOLAR-shaped model: streamed greedy output equals plain `model.generate`, the whole service
path works with SOLARBOT_ENGINE=openai, and each reply's trace is stored."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter, ConsoleOptions
from bot.conversation import PromptBuilder, Turn
from bot.errors import GenerationError
from bot.generation.engine import GenerationRequest, SamplingParams
from bot.generation.openai import OpenAIEngine
from bot.records import JobStatus
from bot.service import Service, build_engine
from bot.settings import load_settings
from storage.repository import Repository

MAX_NEW_TOKENS = 12
SYSTEM = "You are a test."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _transformers_cli() -> str:
    found = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the `transformers` CLI is missing: pip install -e '.[test]'")
    return found


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` with the tiny model preloaded; yields its /v1 base URL."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                _transformers_cli(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                str(tiny_model_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited: {log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{base}/v1/models", timeout=2) as response,
            ):
                if b'"loaded"' in response.read():
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not load the model: {log_path.read_text()}")
            time.sleep(0.3)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _engine(server: str, model_dir: Path) -> OpenAIEngine:
    return OpenAIEngine(
        base_url=server, model=str(model_dir), tokenizer=str(model_dir), context_window=512
    )


async def test_streams_the_same_greedy_reply_as_generate(
    server: str, tiny_model_dir: Path, greedy_text: Callable[[list[int], int], str]
) -> None:
    engine = _engine(server, tiny_model_dir)
    await engine.start()
    try:
        assert engine.health().ready, engine.health().detail
        builder = PromptBuilder(engine.tokenizer, context_window=512, max_new_tokens=MAX_NEW_TOKENS)
        prompt = builder.build(
            system_prompt=SYSTEM, history=[Turn(role="user", text="Hello, who are you?")]
        )
        request = GenerationRequest(
            request_id="r1",
            prompt_ids=prompt.prompt_ids,
            prompt_text=prompt.prompt_text,
            max_new_tokens=MAX_NEW_TOKENS,
            sampling=SamplingParams(temperature=0.0),
        )
        deltas = [delta async for delta in engine.stream(request)]
        expected = greedy_text(prompt.prompt_ids, MAX_NEW_TOKENS)
        assert expected.strip()
        assert "".join(deltas) == expected
        assert len(deltas) > 1, "the reply was not streamed"

        # Without prompt_text the ids are decoded back to text: the server still sees them.
        request = GenerationRequest(
            request_id="r2",
            prompt_ids=prompt.prompt_ids,
            max_new_tokens=MAX_NEW_TOKENS,
            sampling=SamplingParams(temperature=0.0),
        )
        assert "".join([delta async for delta in engine.stream(request)]) == expected
    finally:
        await engine.close()


async def test_closing_a_stream_early_frees_the_request(
    server: str, tiny_model_dir: Path, greedy_text: Callable[[list[int], int], str]
) -> None:
    engine = _engine(server, tiny_model_dir)
    await engine.start()
    try:
        tokenizer = engine.tokenizer
        ids = tokenizer.encode("### User:\nCount to ten.\n\n### Assistant:\n", add_bos=True)
        request = GenerationRequest(
            request_id="long",
            prompt_ids=ids,
            max_new_tokens=400,
            sampling=SamplingParams(temperature=0.0),
        )
        async with contextlib.aclosing(engine.stream(request)) as deltas:
            async for _ in deltas:
                assert engine.health().active_requests == 1
                break
        assert engine.health().active_requests == 0
        short = GenerationRequest(
            request_id="long",  # the id is free again
            prompt_ids=ids,
            max_new_tokens=4,
            sampling=SamplingParams(temperature=0.0),
        )
        text = "".join([delta async for delta in engine.stream(short)])
        assert text == greedy_text(ids, 4)
    finally:
        await engine.close()


async def _relay(port: int, target: str) -> asyncio.Server:
    """A plain TCP relay from 127.0.0.1:port to the server (the server "comes up" on port)."""
    host, target_port = target.removeprefix("http://").split("/")[0].split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", port)


async def test_an_unreachable_server_fails_requests_until_it_comes_up(
    server: str, tiny_model_dir: Path, greedy_text: Callable[[list[int], int], str]
) -> None:
    port = _free_port()
    engine = OpenAIEngine(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=str(tiny_model_dir),
        tokenizer=str(tiny_model_dir),
        context_window=512,
        probe_interval=0.1,
    )
    await engine.start()  # a fleet worker may start before its server: it waits in the queue
    relay: asyncio.Server | None = None
    try:
        health = engine.health()
        assert not health.ready
        assert "unreachable" in health.detail
        ids = engine.tokenizer.encode("### User:\nHi\n\n### Assistant:\n", add_bos=True)
        request = GenerationRequest(
            request_id="x", prompt_ids=ids, max_new_tokens=4, sampling=SamplingParams(temperature=0)
        )
        with pytest.raises(GenerationError, match="unreachable"):
            async for _ in engine.stream(request):
                pass

        relay = await _relay(port, server)  # the server is up now: the engine notices by itself
        async with asyncio.timeout(10):
            while not engine.health().ready:
                await asyncio.sleep(0.05)
        assert "".join([delta async for delta in engine.stream(request)]) == greedy_text(ids, 4)
    finally:
        await engine.close()
        if relay is not None:
            relay.close()
            await relay.wait_closed()


async def test_the_service_answers_through_the_server_and_records_the_trace(
    server: str, tiny_model_dir: Path, tmp_path: Path, greedy_text: Callable[[list[int], int], str]
) -> None:
    settings = load_settings(
        environ={
            "SOLARBOT_ENGINE": "openai",
            "SOLARBOT_OPENAI_BASE_URL": server,
            "SOLARBOT_MODEL": str(tiny_model_dir),
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
            "SOLARBOT_TEMPERATURE": "0",
            "SOLARBOT_CONTEXT_WINDOW": "512",
            "SOLARBOT_SYSTEM_PROMPT": SYSTEM,
        }
    )
    engine = build_engine(settings)
    assert isinstance(engine, OpenAIEngine)
    repository = Repository.open(settings.resolved_database_url())
    output = io.StringIO()
    console = ConsoleAdapter(
        ConsoleOptions(
            input_stream=io.StringIO("Hello, who are you?\n"),
            output_stream=output,
            interactive=False,
        )
    )
    service = Service(settings=settings, repository=repository, engine=engine, adapters=[console])
    watcher = asyncio.create_task(service.stop_when_console_done(console))
    async with asyncio.timeout(120):
        await service.run()
    await watcher
    try:
        builder = PromptBuilder(engine.tokenizer, context_window=512, max_new_tokens=MAX_NEW_TOKENS)
        prompt = builder.build(
            system_prompt=SYSTEM, history=[Turn(role="user", text="Hello, who are you?")]
        )
        expected = greedy_text(prompt.prompt_ids, MAX_NEW_TOKENS)
        assert output.getvalue() == f"solarbot [#general]: {expected}\n"
        [job] = repository.jobs()
        assert job.status is JobStatus.DONE
        assert job.prompt_tokens == prompt.prompt_tokens == len(prompt.prompt_ids)
        assert job.model_id == str(tiny_model_dir)
        assert job.generation_ms is not None and job.generation_ms > 0
    finally:
        repository.close()


def test_the_openai_engine_needs_a_base_url(tmp_path: Path) -> None:
    from tests.support.processes import solarbot

    env = {"SOLARBOT_DATA_DIR": str(tmp_path)}
    result = solarbot("run", "--engine", "openai", env=env, timeout=60)
    assert result.returncode == 2
    assert "SOLARBOT_OPENAI_BASE_URL: required with SOLARBOT_ENGINE=openai" in result.stderr
