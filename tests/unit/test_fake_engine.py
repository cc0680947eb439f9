"""The shipped FakeEngine's batched-GPU model (``token_delay`` / ``batch_capacity``), which the
worker's concurrency tests and ``bench/batching.py`` rely on."""

from __future__ import annotations

import asyncio

import pytest

from bot.generation.engine import GenerationRequest
from bot.generation.fake import FakeEngine


async def _generate(engine: FakeEngine, n: int) -> str:
    request = GenerationRequest(request_id=f"r{n}", prompt_ids=[1, 50], max_new_tokens=100)
    return "".join([delta async for delta in engine.stream(request)])


@pytest.mark.parametrize(("capacity", "requests", "words"), [(4, 10, 5), (1, 3, 4), (16, 16, 3)])
async def test_one_step_gives_every_admitted_request_a_word_and_the_rest_wait_in_order(
    capacity: int, requests: int, words: int
) -> None:
    reply = " ".join(f"w{n}" for n in range(words))
    engine = FakeEngine(script=lambda _: reply, token_delay=0.03, batch_capacity=capacity)
    await engine.start()
    assert engine.max_concurrent_requests == capacity
    replies = await asyncio.gather(*(_generate(engine, n) for n in range(requests)))
    assert replies == [reply] * requests
    assert engine.peak_active == min(capacity, requests)
    first, last = engine.first_token_step, engine.last_token_step
    for n in range(requests):
        wave = n // capacity  # admitted in arrival order, `capacity` at a time
        # One word per step however many share it: wave k runs steps k*words+1 .. (k+1)*words.
        assert (first[f"r{n}"], last[f"r{n}"]) == (wave * words + 1, (wave + 1) * words), n
    assert engine.steps == -(-requests // capacity) * words


def test_a_batch_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_capacity"):
        FakeEngine(batch_capacity=0)
