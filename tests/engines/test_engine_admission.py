"""Admission control in TransformersEngine: a tiny KV cache (3 usable pages of 256 tokens) on the
CPU, the tiny SOLAR-shaped model, many channels at once. Nothing may fail or crash the generation
thread: requests that do not fit wait in FIFO order; one that can never fit is refused up front."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.errors import EngineClosedError, GenerationError
from bot.generation.engine import GenerationRequest, SamplingParams
from bot.generation.local import TransformersEngine
from bot.generation.options import LocalEngineOptions

module_loop = pytest.mark.asyncio(loop_scope="module")
GREEDY = SamplingParams(temperature=0.0)
_ids = iter(range(1_000_000))


def request(prompt: list[int], max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"adm-{next(_ids)}",
        prompt_ids=prompt,
        max_new_tokens=max_new_tokens,
        sampling=GREEDY,
    )


def prompt_of(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [1, *(rng.randrange(3, 32000) for _ in range(length - 1))]


async def text(engine: TransformersEngine, req: GenerationRequest) -> str:
    return "".join([delta async for delta in engine.stream(req)])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = TransformersEngine(
        LocalEngineOptions(
            model=str(tiny_model_dir),
            device="cpu",
            cache_blocks=4,
            stop_strings=(),
            ignore_eos=True,
        )
    )
    await eng.start()
    yield eng
    await eng.close()


@module_loop
async def test_256_channels_with_long_histories_queue_and_all_complete(
    engine: TransformersEngine,
) -> None:
    assert engine.cache_tokens == 3 * 256
    most_queued = 0

    async def watch() -> None:
        nonlocal most_queued
        while True:
            most_queued = max(most_queued, engine.queued_requests)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        # Each needs up to a whole page: at most three run at once, the rest must wait.
        prompts = [prompt_of(150 + (i % 7) * 12, seed=i) for i in range(256)]
        results = await asyncio.wait_for(
            asyncio.gather(*(text(engine, request(p, 3)) for p in prompts)), 100
        )
    finally:
        watcher.cancel()
    assert all(results), "every request produced text"
    assert max(most_queued, engine.peak_queued_requests) > 200
    assert engine.queued_requests == 0 and engine.health().ready
    assert engine.health().active_requests == 0


@module_loop
async def test_prompt_larger_than_the_cache_is_refused_and_the_engine_lives(
    engine: TransformersEngine,
) -> None:
    # Unguarded, transformers' scheduler raises in its thread and fails every request.
    with pytest.raises(GenerationError, match="KV cache"):
        await text(engine, request(prompt_of(900, seed=1), 5))
    assert engine.health().ready
    # A prompt that fits, with more new tokens than the cache has room for: shortened.
    out = await asyncio.wait_for(text(engine, request(prompt_of(700, seed=2), 500)), 60)
    assert out and engine.health().ready


@module_loop
async def test_cancelling_a_queued_request_lets_the_others_through(
    engine: TransformersEngine,
) -> None:
    long = [request(prompt_of(200, seed=10 + i), 40) for i in range(3)]  # fill all three pages
    running = [asyncio.create_task(text(engine, r)) for r in long]
    waiting = asyncio.create_task(text(engine, request(prompt_of(20, seed=20), 3)))
    behind = asyncio.create_task(text(engine, request(prompt_of(20, seed=21), 3)))
    while engine.queued_requests < 2:
        await asyncio.sleep(0.001)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert engine.queued_requests == 1
    assert await asyncio.wait_for(behind, 60)
    assert all(await asyncio.wait_for(asyncio.gather(*running), 60))
    assert engine.queued_requests == 0 and engine.health().active_requests == 0


async def test_closing_fails_queued_requests(tiny_model_dir: Path) -> None:
    eng = TransformersEngine(
        LocalEngineOptions(
            model=str(tiny_model_dir), device="cpu", max_active_requests=1, ignore_eos=True
        )
    )
    await eng.start()
    try:
        first = eng.stream(request(prompt_of(10, seed=3), 2000))
        await anext(first)
        queued = asyncio.create_task(text(eng, request(prompt_of(10, seed=4), 5)))
        while eng.queued_requests < 1:
            await asyncio.sleep(0.001)
        await eng.close()
        with pytest.raises(EngineClosedError):
            await queued
        with pytest.raises(EngineClosedError):
            await anext(first)
    finally:
        await eng.close()


def test_settings_reach_the_local_engine() -> None:
    from bot.service import build_engine
    from bot.settings import load_settings

    settings = load_settings(
        environ={
            "SOLARBOT_CUDA_GRAPHS": "true",
            "SOLARBOT_COMPILE_LEVEL": "2",
            "SOLARBOT_ASYNC_BATCHING": "false",
            "SOLARBOT_KV_MEMORY_FRACTION": "0.7",
            "SOLARBOT_MAX_ACTIVE_REQUESTS": "64",
        }
    )
    engine = build_engine(settings)
    assert isinstance(engine, TransformersEngine)
    options = engine.options
    assert (options.cuda_graphs, options.compile_level, options.async_batching) == (True, 2, False)
    assert options.kv_memory_fraction == 0.7 and options.max_active_requests == 64
