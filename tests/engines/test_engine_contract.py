"""What every engine that runs the model here promises, checked the same way for the local engine
(transformers' continuous batching) and the static engine (our decode loop), on the tiny
SOLAR-shaped model on the CPU."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from bot.errors import ConfigError, ContextWindowError, GenerationError, SolarbotError
from bot.generation.loading import HFTokenizer
from bot.generation.local import TransformersEngine
from bot.generation.options import LocalEngineOptions
from bot.generation.static import StaticCacheEngine
from tests.support.engine_support import collect, make_request, prompt_ids, wait_idle

LocalEngine = TransformersEngine | StaticCacheEngine
ENGINES: dict[str, type[TransformersEngine] | type[StaticCacheEngine]] = {
    "local": TransformersEngine,
    "static": StaticCacheEngine,
}
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=sorted(ENGINES))
async def engine(
    request: pytest.FixtureRequest, tiny_model_dir: Path
) -> AsyncIterator[LocalEngine]:
    eng = ENGINES[request.param](
        LocalEngineOptions(model=str(tiny_model_dir), device="cpu", max_active_requests=2)
    )
    await eng.start()
    yield eng
    await eng.close()


@module_loop
async def test_request_validation(engine: LocalEngine, tiny_tokenizer: HFTokenizer) -> None:
    prompt = prompt_ids(tiny_tokenizer, "hi")
    with pytest.raises(GenerationError, match="context window"):
        await collect(engine, make_request(prompt * 400, 10))
    with pytest.raises(GenerationError, match="empty"):
        await collect(engine, make_request([], 10))
    with pytest.raises(GenerationError, match="vocabulary"):
        await collect(engine, make_request([1, 99999], 10))

    request = make_request(prompt, 2000)
    async with contextlib.aclosing(engine.stream(request)) as stream:
        await anext(stream)
        with pytest.raises(GenerationError, match="already generating"):
            await collect(engine, request)
    await wait_idle(engine)


@module_loop
async def test_greedy_single_request_equals_generate(
    engine: LocalEngine,
    tiny_tokenizer: HFTokenizer,
    greedy_text: Callable[[list[int], int], str],
) -> None:
    """Token for token (through the decoded text) ``model.generate(do_sample=False)``, streamed."""
    prompt = prompt_ids(tiny_tokenizer, "Tell me a story about the sun.")
    deltas = await collect(engine, make_request(prompt, 20))
    expected = greedy_text(prompt, 20)
    assert len(expected) > 10
    assert "".join(deltas) == expected
    assert len([d for d in deltas if d]) > 1  # streamed, not delivered at the end
    assert engine.health().active_requests == 0


@module_loop
async def test_the_model_id_is_the_model_served(engine: LocalEngine, tiny_model_dir: Path) -> None:
    assert engine.model_id == str(tiny_model_dir) == engine.health().model_id


@pytest.mark.parametrize("kind", sorted(ENGINES))
@pytest.mark.parametrize(("window", "reply"), [(None, 256), (None, 300), (200, 100), (4096, 256)])
async def test_a_window_without_room_for_a_reply_fails_before_the_weights_load(
    kind: str, window: int | None, reply: int, few_positions_model: Path
) -> None:
    """The model allows 256 positions (its folder holds only the config): a window that leaves no
    room for ``reply`` tokens ends start-up with one line naming the settings; one that does
    passes the check and goes on to load the tokenizer and weights, which are not there."""
    engine = ENGINES[kind](
        LocalEngineOptions(
            model=str(few_positions_model),
            device="cpu",
            context_window=window,
            max_new_tokens=reply,
        )
    )
    effective = min(window or 256, 256)
    expected: type[Exception] = ContextWindowError if effective <= reply else SolarbotError
    try:
        with pytest.raises(expected) as caught:
            await engine.start()
    finally:
        await engine.close()
    message = str(caught.value)
    if expected is ContextWindowError:
        assert "\n" not in message and f"SOLARBOT_MAX_NEW_TOKENS={reply}" in message
        assert "SOLARBOT_CONTEXT_WINDOW" in message
        assert ("allows only 256 positions" in message) == (window is None or window > reply)
    else:
        assert not isinstance(caught.value, ContextWindowError)


@pytest.mark.parametrize(
    ("key", "option", "value"),
    [
        ("SOLARBOT_DTYPE", "dtype", "fp8"),
        ("SOLARBOT_DEVICE", "device", "tpu"),
        ("SOLARBOT_CONTEXT_WINDOW", "context_window", 0),
        ("SOLARBOT_MAX_NEW_TOKENS", "max_new_tokens", -1),
        ("SOLARBOT_CACHE_BLOCKS", "cache_blocks", 0),
        ("SOLARBOT_MAX_BATCH_TOKENS", "max_batch_tokens", -3),
        ("SOLARBOT_MAX_ACTIVE_REQUESTS", "max_active_requests", 0),
        ("SOLARBOT_COMPILE_LEVEL", "compile_level", 4),
        ("SOLARBOT_KV_MEMORY_FRACTION", "kv_memory_fraction", 1.0),
        ("prefill_tokens", "prefill_tokens", 0),
    ],
)
def test_bad_options_fail_on_creation_naming_the_setting(
    key: str, option: str, value: object
) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalEngineOptions(**{option: value})  # type: ignore[arg-type]
    assert str(caught.value).startswith(key) and "\n" not in str(caught.value)


def test_options_are_frozen_and_hold_a_tuple_of_stop_strings() -> None:
    options = LocalEngineOptions(stop_strings=["### User:"])  # type: ignore[arg-type]
    assert options.stop_strings == ("### User:",) and hash(options) == hash(options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.model = "other"  # type: ignore[misc]
