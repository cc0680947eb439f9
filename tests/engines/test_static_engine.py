"""StaticCacheEngine (our decode loop) against the tiny SOLAR-shaped model on the CPU, in float32.

Greedy output must equal ``model.generate(do_sample=False)`` token for token (checked through the
decoded text), also when requests join and leave mid-batch, when there are fewer cache slots than
requests (the rest queue), and after slots were freed by cancellations (slot compaction moves KV).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.errors import ConfigError, EngineClosedError
from bot.generation.engine import Engine, SamplingParams
from bot.generation.loading import HFTokenizer
from bot.generation.options import LocalEngineOptions
from bot.generation.static import StaticCacheEngine
from tests.support.engine_support import collect, make_request, prompt_ids, wait_idle

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir: Path) -> AsyncIterator[StaticCacheEngine]:
    # Two slots: a third concurrent request must wait for one to free.
    eng = StaticCacheEngine(
        LocalEngineOptions(model=str(tiny_model_dir), device="cpu", max_active_requests=2)
    )
    await eng.start()
    yield eng
    await eng.close()


@module_loop
async def test_health(engine: StaticCacheEngine) -> None:
    """(The single greedy request is in tests/engines/test_engine_contract.py, for both engines.)"""
    assert isinstance(engine, Engine)
    assert engine.health().ready and engine.slots == 2 and engine.context_window == 4096


@module_loop
async def test_join_leave_and_queue_for_slots_match_generate(
    engine: StaticCacheEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    texts = ["Hi", "What is the capital of France? " * 3, "Write code " * 12, "ok?", "Why?"]
    prompts = [prompt_ids(tiny_tokenizer, text) for text in texts]
    budgets = [40, 12, 25, 8, 30]
    started = [asyncio.Event() for _ in prompts]
    results: list[list[str]] = [[] for _ in prompts]

    async def run(i: int) -> None:
        if i > 0:
            await started[i - 1].wait()  # join while earlier ones are generating
        async for delta in engine.stream(make_request(prompts[i], budgets[i])):
            results[i].append(delta)
            started[i].set()
        started[i].set()

    sampled = asyncio.create_task(
        collect(engine, make_request(prompts[1], 16, SamplingParams(temperature=0.9, top_p=0.9)))
    )
    await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(len(prompts)))), 120)
    assert "".join(await sampled)
    for i, prompt in enumerate(prompts):
        assert "".join(results[i]) == greedy_text(prompt, budgets[i]), f"request {i}"
    await wait_idle(engine)


@module_loop
async def test_cancel_and_break_free_their_slots(
    engine: StaticCacheEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    prompt = prompt_ids(tiny_tokenizer, "Go on forever.")
    for _ in range(3):  # more than the two slots: each break must free one
        async with contextlib.aclosing(engine.stream(make_request(prompt, 2000))) as stream:
            async for _ in stream:
                break
    request = make_request(prompt_ids(tiny_tokenizer, "Long answer please."), 2000)
    deltas: list[str] = []
    async for delta in engine.stream(request):
        deltas.append(delta)
        if len(deltas) == 3:
            await engine.cancel(request.request_id)
    assert 3 <= len(deltas) < 50
    # A long request keeps one slot; a slot freed mid-batch is refilled correctly.
    other = prompt_ids(tiny_tokenizer, "Still there?")
    long_task = asyncio.create_task(collect(engine, make_request(prompt, 60)))
    short = "".join(await asyncio.wait_for(collect(engine, make_request(other, 10)), 60))
    assert short == greedy_text(other, 10)
    assert "".join(await asyncio.wait_for(long_task, 60)) == greedy_text(prompt, 60)
    await wait_idle(engine)
    await engine.cancel("unknown")  # a no-op


@module_loop
async def test_cancelling_a_queued_request_lets_the_next_one_through(
    engine: StaticCacheEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    prompt = prompt_ids(tiny_tokenizer, "Go on forever.")
    running = [asyncio.create_task(collect(engine, make_request(prompt, 30))) for _ in range(2)]
    first = asyncio.create_task(collect(engine, make_request(prompt, 5)))
    other = prompt_ids(tiny_tokenizer, "Next, please.")
    second = asyncio.create_task(collect(engine, make_request(other, 6)))
    while engine.queued_requests < 2:
        await asyncio.sleep(0.001)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert "".join(await asyncio.wait_for(second, 60)) == greedy_text(other, 6)
    for task in running:
        assert "".join(await asyncio.wait_for(task, 60)) == greedy_text(prompt, 30)
    await wait_idle(engine)
    assert engine.peak_queued_requests >= 2


async def test_stop_string_and_close(
    tiny_model_dir: Path, tiny_tokenizer: HFTokenizer, greedy_text: Callable[[list[int], int], str]
) -> None:
    prompt = prompt_ids(tiny_tokenizer, "Tell me a story about the sun.")
    full = greedy_text(prompt, 40)
    stop = " " + full.split(" ")[4][:4]
    expected = full[: full.index(stop)].rstrip()
    eng = StaticCacheEngine(
        LocalEngineOptions(
            model=str(tiny_model_dir), device="cpu", stop_strings=(stop,), max_active_requests=1
        )
    )
    await eng.start()
    try:
        assert "".join(await collect(eng, make_request(prompt, 40))) == expected
        other = prompt_ids(tiny_tokenizer, "Another prompt")
        stream = eng.stream(make_request(other, 2000))
        await anext(stream)
        queued = asyncio.create_task(collect(eng, make_request(other, 5)))  # no free slot
        while eng.queued_requests < 1:
            await asyncio.sleep(0.001)
        await eng.close()
        for pending in (anext(stream), queued):
            with pytest.raises(EngineClosedError):
                await pending
        assert not eng.health().ready
    finally:
        await eng.close()


def test_from_loaded_accepts_a_minimal_tokenizer(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    class Chars:
        def decode(self, ids: Any) -> str:
            return "".join(chr(0x4E00 + int(i)) for i in ids)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)

    async def run() -> list[int]:
        eng = StaticCacheEngine.from_loaded(
            model, Chars(), options=LocalEngineOptions(ignore_eos=True, stop_strings=())
        )
        await eng.start()
        try:
            text = "".join(await collect(eng, make_request([1, 22557, 1526], 7)))
        finally:
            await eng.close()
        return [ord(ch) - 0x4E00 for ch in text]

    ids = asyncio.run(run())
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([[1, 22557, 1526]]),
            do_sample=False,
            max_new_tokens=7,
            min_new_tokens=7,
            pad_token_id=2,
        )
    assert ids == out[0, 3:].tolist()


def test_settings_select_the_static_engine() -> None:
    from bot.service import build_engine
    from bot.settings import load_settings

    settings = load_settings(
        environ={
            "SOLARBOT_ENGINE": "static",
            "SOLARBOT_DEVICE": "cpu",
            "SOLARBOT_CUDA_GRAPHS": "false",
            "SOLARBOT_MAX_ACTIVE_REQUESTS": "3",
            "SOLARBOT_KV_MEMORY_FRACTION": "0.5",
            "SOLARBOT_COMPILE_LEVEL": "1",
        }
    )
    engine = build_engine(settings)
    assert isinstance(engine, StaticCacheEngine)
    options = engine.options
    assert options.max_active_requests == 3 and options.cuda_graphs is False
    assert options.compile_decode and options.kv_memory_fraction == 0.5
    with pytest.raises(ConfigError, match="SOLARBOT_COMPILE_LEVEL"):
        load_settings(environ={"SOLARBOT_COMPILE_LEVEL": "7"})


def test_decode_through_captured_graphs_matches_generate(
    tiny_model_dir: Path,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA-graph bookkeeping on the CPU: a stand-in for torch.cuda's graph API whose replay
    re-runs the captured (batch, length) step into the captured output tensor. Output must still
    equal generate: the step reads only the static input buffers, replays fill the tensor that is
    sampled, and capturing leaves no trace in the KV cache."""
    import torch

    from bot.generation.static.runner import DecodeRunner

    holder: dict[str, Any] = {}

    class FakeStream:
        def wait_stream(self, other: Any) -> None:
            pass

    class FakeGraph:
        def replay(self) -> None:
            runner = holder["runner"]
            key = next(k for k, (g, _) in runner.graphs.items() if g is self)
            runner.graphs[key][1].copy_(runner.decode_forward(*key))

    class FakeCapture:
        def __init__(
            self, cuda_graph: Any, pool: Any = None, capture_error_mode: str = "global"
        ) -> None:
            holder["modes"] = capture_error_mode

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: object) -> None:
            pass

    stream = FakeStream()
    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", FakeCapture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    original = DecodeRunner.capture

    def capture(self: Any) -> None:
        holder["runner"] = self
        self.use_graphs = True
        original(self)

    monkeypatch.setattr(DecodeRunner, "capture", capture)

    async def run() -> tuple[list[str], int]:
        eng = StaticCacheEngine(
            LocalEngineOptions(
                model=str(tiny_model_dir), device="cpu", context_window=1024, max_active_requests=3
            )
        )
        await eng.start()
        try:
            graphs = eng.graph_count
            texts = ["Hi", "What is the capital of France? " * 3, "Write code " * 12, "ok?"]
            prompts = [prompt_ids(tiny_tokenizer, text) for text in texts]
            outs = await asyncio.gather(
                *(
                    collect(eng, make_request(p, n))
                    for p, n in zip(prompts, [30, 9, 20, 12], strict=True)
                )
            )
            return ["".join(o) for o in outs], graphs
        finally:
            await eng.close()

    texts, graphs = asyncio.run(run())
    assert graphs == 3 * 4  # batch buckets 1, 2, 3 x length buckets 256, 512, 768, 1024
    assert holder["modes"] == "thread_local"
    prompts = [
        prompt_ids(tiny_tokenizer, t)
        for t in ["Hi", "What is the capital of France? " * 3, "Write code " * 12, "ok?"]
    ]
    for text, prompt, n in zip(texts, prompts, [30, 9, 20, 12], strict=True):
        assert text == greedy_text(prompt, n)
