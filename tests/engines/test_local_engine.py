"""TransformersEngine, IncrementalDecoder and StopMatcher against the tiny SOLAR-shaped model.

Everything is real: SOLAR's tokenizer and template, a random 2-layer Llama on CPU in float32,
transformers' continuous batching on its own thread. Greedy output is checked token for token
(through the decoded text) against ``model.generate(do_sample=False)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.errors import (
    EngineClosedError,
    ModelNotFoundError,
    SolarbotError,
)
from bot.generation.decoding import REPLACEMENT_CHAR, IncrementalDecoder, StopMatcher
from bot.generation.engine import Engine, SamplingParams, Tokenizer
from bot.generation.loading import HFTokenizer
from bot.generation.local import TransformersEngine
from bot.generation.options import LocalEngineOptions
from bot.generation.solar import SOLAR_CHAT_TEMPLATE, STOP_HEADERS
from tests.support.engine_support import collect, make_request, prompt_ids

module_loop = pytest.mark.asyncio(loop_scope="module")
# Every character below 🙂 is spelled with SentencePiece byte-fallback tokens (<0xF0> ...).
MULTIBYTE = "héllo wörld 你好 🙂 — code 🦜 🤖 ꙮ ǅ ∮\n\n```py\nx = 1\n```"


# -- fixtures ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_dir: Path) -> AsyncIterator[TransformersEngine]:
    eng = TransformersEngine(
        LocalEngineOptions(model=str(tiny_model_dir), device="cpu", dtype="float32")
    )
    await eng.start()
    yield eng
    await eng.close()


async def wait_idle(engine: TransformersEngine) -> None:
    """Until no request is active in the engine and the scheduler holds none (cache freed)."""
    deadline = time.monotonic() + 5.0
    while True:
        scheduler = engine._manager.batch_processor.scheduler
        idle = (
            engine.health().active_requests == 0
            and not scheduler.active_requests
            and not scheduler.waiting_requests
        )
        if idle:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"engine not idle: {engine.health()}, scheduler active "
                f"{list(scheduler.active_requests)}, waiting {list(scheduler.waiting_requests)}"
            )
        await asyncio.sleep(0.01)


# -- HFTokenizer ------------------------------------------------------------------------------------


def test_hf_tokenizer_renders_solar_template(tiny_tokenizer: HFTokenizer) -> None:
    assert isinstance(tiny_tokenizer, Tokenizer)
    text = tiny_tokenizer.render_chat(
        [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi there"}],
        add_generation_prompt=True,
    )
    assert text == "### System:\nBe nice.\n\n### User:\nHi there\n\n### Assistant:\n"


def test_hf_tokenizer_encode_decode(tiny_tokenizer: HFTokenizer, tiny_hf_tokenizer: Any) -> None:
    assert tiny_tokenizer.encode("Hello world", add_bos=True) == [1, 22557, 1526]
    assert tiny_tokenizer.encode("Hello world", add_bos=False) == [22557, 1526]
    rendered = tiny_tokenizer.render_chat(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    ids = tiny_tokenizer.encode(rendered, add_bos=True)
    assert ids[0] == 1
    assert ids == tiny_hf_tokenizer(rendered).input_ids  # same as the tokenizer's own BOS handling
    assert tiny_tokenizer.decode([1, 22557, 1526, 2]) == "Hello world"


def test_hf_tokenizer_sets_solar_template_when_missing(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    bare.chat_template = None
    wrapped = HFTokenizer(bare)
    assert wrapped.hf.chat_template == SOLAR_CHAT_TEMPLATE
    text = wrapped.render_chat([{"role": "user", "content": "x"}], add_generation_prompt=False)
    assert text == "### User:\nx\n\n"


# -- IncrementalDecoder -----------------------------------------------------------------------------


def test_incremental_decoder_multibyte_one_id_at_a_time(tiny_tokenizer: HFTokenizer) -> None:
    ids = tiny_tokenizer.encode(MULTIBYTE, add_bos=False)
    pieces = tiny_tokenizer.hf.convert_ids_to_tokens(ids)
    assert "<0xF0>" in pieces  # the emoji really are split over byte tokens
    decoder = IncrementalDecoder(tiny_tokenizer)
    deltas = [decoder.feed([token]) for token in ids]
    deltas.append(decoder.finish())
    assert all(REPLACEMENT_CHAR not in delta for delta in deltas)
    assert "".join(deltas) == MULTIBYTE == tiny_tokenizer.decode(ids)
    assert "🦜" in deltas  # the four byte tokens come out as one whole character
    assert sum(1 for delta in deltas if delta) > 10  # and the text streams


def test_incremental_decoder_cumulative_and_leading_spaces(tiny_tokenizer: HFTokenizer) -> None:
    text = "  Hello   world,\tthis is  SOLAR ▁ spacing. 🤖\n end "
    ids = [1, *tiny_tokenizer.encode(text, add_bos=False), 2]  # special tokens are skipped
    decoder = IncrementalDecoder(tiny_tokenizer)
    out = "".join(decoder.feed_cumulative(ids[:n]) for n in range(1, len(ids) + 1))
    out += decoder.finish()
    assert out == tiny_tokenizer.decode(ids)
    assert decoder.feed_cumulative(ids) == ""
    with pytest.raises(ValueError):
        decoder.feed_cumulative(ids[:2])


def test_incremental_decoder_matches_decode_for_random_ids(tiny_tokenizer: HFTokenizer) -> None:
    import random

    rng = random.Random(7)
    for _ in range(50):
        # Ids above the 256 byte tokens: a random run of byte tokens is not valid UTF-8.
        ids = [rng.randrange(259, 32000) for _ in range(40)]
        decoder = IncrementalDecoder(tiny_tokenizer)
        chunks: list[str] = []
        start = 0
        while start < len(ids):
            step = rng.randint(1, 4)
            chunks.append(decoder.feed(ids[start : start + step]))
            start += step
        assert "".join(chunks) + decoder.finish() == tiny_tokenizer.decode(ids)


# -- StopMatcher ------------------------------------------------------------------------------------


def test_stop_matcher_header_split_across_deltas_is_never_emitted() -> None:
    matcher = StopMatcher(STOP_HEADERS)
    emitted = []
    for delta in ["Sure, here", " it is.", "\n", "\n### Us", "er:", "\nmore"]:
        result = matcher.feed(delta)
        emitted.append(result.text)
        if result.stopped:
            break
    assert result.stopped
    assert "".join(emitted) == "Sure, here it is."
    assert all("#" not in text for text in emitted)
    assert matcher.flush() == ""
    assert matcher.feed("anything") == ("", True)


def test_stop_matcher_holds_back_only_possible_stop_prefixes() -> None:
    matcher = StopMatcher(STOP_HEADERS)
    assert matcher.feed("a #") == ("a", False)  # " #" might start "### User:"
    assert matcher.feed("## Use") == ("", False)
    assert matcher.feed("d it") == (" ### Used it", False)  # resolved: not a stop after all
    assert matcher.feed("\n\n") == ("", False)  # trailing whitespace waits for what follows
    assert matcher.feed("ok") == ("\n\nok", False)
    assert matcher.feed("### System: x") == ("", True)


def test_stop_matcher_strips_whitespace_before_header_in_one_delta() -> None:
    matcher = StopMatcher(STOP_HEADERS)
    assert matcher.feed("Answer.\n\n### User:\nnext question") == ("Answer.", True)


def test_stop_matcher_flushes_everything_without_a_stop() -> None:
    matcher = StopMatcher(STOP_HEADERS)
    text = "Code:\n```\n# comment ###\n```\n\n### Us"
    emitted = "".join(matcher.feed(ch).text for ch in text)
    assert not matcher.stopped
    assert emitted + matcher.flush() == text
    assert matcher.flush() == ""


# -- the engine -------------------------------------------------------------------------------------


@module_loop
async def test_engine_health_and_properties(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    health = engine.health()
    assert health.ready and health.device == "cpu" and health.active_requests == 0
    assert health.model_id == engine.model_id
    assert engine.context_window == 4096  # max_position_embeddings of the tiny model
    assert isinstance(engine.tokenizer, HFTokenizer)
    await engine.start()  # idempotent


@module_loop
async def test_concurrent_requests_join_and_leave_mid_batch(
    engine: TransformersEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    texts = ["Hi", "What is the capital of France? " * 3, "Write code " * 12, "ok?"]
    prompts = [prompt_ids(tiny_tokenizer, text) for text in texts]
    assert len({len(p) for p in prompts}) == len(prompts)
    budgets = [40, 12, 25, 8]
    started = [asyncio.Event() for _ in prompts]
    finished_at: list[float] = [0.0] * len(prompts)
    started_at: list[float] = [0.0] * len(prompts)
    results: list[list[str]] = [[] for _ in prompts]

    async def run(i: int) -> None:
        if i > 0:
            await started[i - 1].wait()  # join while the previous request is generating
        started_at[i] = time.monotonic()
        async for delta in engine.stream(make_request(prompts[i], budgets[i])):
            results[i].append(delta)
            if len(results[i]) == 2:
                started[i].set()
        started[i].set()
        finished_at[i] = time.monotonic()

    # A sampled request in the same batch must not disturb the greedy ones.
    sampled = make_request(prompts[1], 16, SamplingParams(temperature=0.9, top_p=0.9))
    sampled_task = asyncio.create_task(collect(engine, sampled))
    await asyncio.gather(*(run(i) for i in range(len(prompts))))
    sampled_deltas = await sampled_task
    for i, prompt in enumerate(prompts):
        assert "".join(results[i]) == greedy_text(prompt, budgets[i]), f"request {i}"
    assert started_at[1] < finished_at[0]  # the second joined before the first left
    assert "".join(sampled_deltas)  # the sampled one produced text
    await wait_idle(engine)


@module_loop
async def test_max_new_tokens_is_respected(
    engine: TransformersEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    prompt = prompt_ids(tiny_tokenizer, "Count to ten.")
    short = "".join(await collect(engine, make_request(prompt, 5)))
    assert short == greedy_text(prompt, 5)
    assert len(greedy_text(prompt, 20)) > len(short)


@module_loop
async def test_breaking_out_cancels_the_request(
    engine: TransformersEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    prompt = prompt_ids(tiny_tokenizer, "Go on forever.")
    async with contextlib.aclosing(engine.stream(make_request(prompt, 2000))) as stream:
        async for _ in stream:
            break
    assert engine.health().active_requests == 0  # cleaned up at once with aclosing
    await wait_idle(engine)

    # A plain `break` also cancels, once the async generator is finalized.
    async for _ in engine.stream(make_request(prompt, 2000)):
        break
    await wait_idle(engine)

    # And so does cancelling the consuming task.
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(make_request(prompt, 2000)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(engine)

    # The engine still works.
    other = prompt_ids(tiny_tokenizer, "Still there?")
    assert "".join(await collect(engine, make_request(other, 10))) == greedy_text(other, 10)


@module_loop
async def test_engine_cancel_ends_the_stream(
    engine: TransformersEngine, tiny_tokenizer: HFTokenizer
) -> None:
    request = make_request(prompt_ids(tiny_tokenizer, "Long answer please."), 2000)
    deltas: list[str] = []
    async for delta in engine.stream(request):
        deltas.append(delta)
        if len(deltas) == 3:
            await engine.cancel(request.request_id)
    assert 3 <= len(deltas) < 50
    await wait_idle(engine)
    await engine.cancel("unknown-request")  # a no-op


@module_loop
async def test_stop_string_mid_generation_ends_and_cancels(
    tiny_model_dir: Path, tiny_tokenizer: HFTokenizer, greedy_text: Callable[[list[int], int], str]
) -> None:
    # The random model never writes "### User:", so pick a stop string from its real greedy
    # output: the engine must cut there, drop the whitespace before it, and free the request.
    prompt = prompt_ids(tiny_tokenizer, "Tell me a story about the sun.")
    full = greedy_text(prompt, 40)
    words = full.split(" ")
    assert len(words) > 6
    stop = " " + words[4][:4]
    cut = full.index(stop)
    expected = full[:cut].rstrip()
    assert 0 < len(expected) < len(full)

    eng = TransformersEngine(
        LocalEngineOptions(model=str(tiny_model_dir), device="cpu", stop_strings=(stop,))
    )
    await eng.start()
    try:
        deltas = await collect(eng, make_request(prompt, 40))
        assert "".join(deltas) == expected
        assert all(stop not in delta for delta in deltas)
        await wait_idle(eng)
        # Unaffected prompts still run to max_new_tokens.
        other = prompt_ids(tiny_tokenizer, "Another prompt")
        text = "".join(await collect(eng, make_request(other, 8)))
        if stop not in greedy_text(other, 8):
            assert text == greedy_text(other, 8)

        # Closing the engine ends in-flight streams with EngineClosedError.
        stream = eng.stream(make_request(other, 2000))
        await anext(stream)
        await eng.close()
        with pytest.raises(EngineClosedError):
            await anext(stream)
        assert not eng.health().ready
        with pytest.raises(EngineClosedError):
            await collect(eng, make_request(other, 5))
    finally:
        await eng.close()


async def test_stream_before_start_raises() -> None:
    eng = TransformersEngine(LocalEngineOptions(model="/nonexistent/never-started", device="cpu"))
    assert eng.health().detail == "not started"
    with pytest.raises(EngineClosedError):
        await collect(eng, make_request([1, 2, 3], 5))


# -- model not found --------------------------------------------------------------------------------


def assert_actionable(error: SolarbotError) -> None:
    message = str(error)
    assert "SOLARBOT_MODEL" in message and "SOLARBOT_OFFLINE" in message


async def test_missing_local_folder_fails_fast(tmp_path: Path) -> None:
    eng = TransformersEngine(
        LocalEngineOptions(model=str(tmp_path / "no-such-model"), device="cpu")
    )
    began = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        await eng.start()
    assert time.monotonic() - began < 5
    assert_actionable(info.value)
    assert "no-such-model" in str(info.value)


async def test_empty_local_folder_is_not_a_model(tmp_path: Path) -> None:
    eng = TransformersEngine(LocalEngineOptions(model=str(tmp_path), device="cpu"))
    with pytest.raises(ModelNotFoundError) as info:
        await eng.start()
    assert_actionable(info.value)


async def test_hub_id_offline_fails_fast() -> None:
    eng = TransformersEngine(
        LocalEngineOptions(model="solarbot-test/not-a-real-model", device="cpu", offline=True)
    )
    began = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        await eng.start()
    assert time.monotonic() - began < 5
    assert_actionable(info.value)
    assert "SOLARBOT_OFFLINE=true" in str(info.value)


async def test_hub_id_with_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    eng = TransformersEngine(
        LocalEngineOptions(model="solarbot-test/not-a-real-model", device="cpu", offline=False)
    )
    began = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        await eng.start()
    assert time.monotonic() - began < 5
    assert_actionable(info.value)
    assert "unreachable" in str(info.value)
