"""What the engine tests share: prompts in SOLAR's template, greedy requests, collecting a stream."""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

from bot.generation.engine import (
    Engine,
    EngineHealth,
    GenerationRequest,
    SamplingParams,
    Tokenizer,
)

GREEDY = SamplingParams(temperature=0.0)
_request_ids = itertools.count()


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    rendered = tokenizer.render_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        add_generation_prompt=True,
    )
    return tokenizer.encode(rendered, add_bos=True)


def make_request(
    prompt: list[int], max_new_tokens: int, sampling: SamplingParams = GREEDY
) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"test-{next(_request_ids)}",
        prompt_ids=prompt,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
    )


async def collect(engine: Engine, request: GenerationRequest) -> list[str]:
    return [delta async for delta in engine.stream(request)]


class QueueingEngine(Protocol):
    """An engine that reports what it has admitted and what waits (the local engines)."""

    def health(self) -> EngineHealth: ...

    @property
    def queued_requests(self) -> int: ...


async def wait_idle(engine: QueueingEngine) -> None:
    """Until no request is active in the engine and none waits (5 s at most)."""
    for _ in range(500):
        if engine.health().active_requests == 0 and engine.queued_requests == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not idle: {engine.health()}, queued {engine.queued_requests}")
