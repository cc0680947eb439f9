"""The local engine: SOLAR on this machine with transformers' continuous batching.

One ``ContinuousBatchingManager`` runs the model on its own background thread and batches every
active request together (requests join and leave the batch between steps). This module only talks
to it from the asyncio loop: ``add_request``/``cancel_request`` are queue puts, and results come
back through ``register_result_handler`` callbacks that transformers schedules on the loop with
``call_soon_threadsafe``. Loading the model runs in a worker thread, never on the loop.

Sampling: transformers decides sampling vs argmax once per manager (``do_sample``), but with
``per_request_processors=True`` temperature, top-k and top-p are per request. The engine therefore
always samples and makes a greedy request (``temperature == 0``) deterministic with ``top_k=1``: the
only token left is the argmax, so the result equals ``generate(do_sample=False)``.

All requests must come from the event loop that called ``start()``: transformers delivers each
batch of results through the loop of one of the batch's handlers.

Admission control: transformers' scheduler kills its generation thread (failing every request) when
a request cannot be scheduled at all, and preempts/recomputes requests when the paged KV cache runs
out mid-decode. The engine therefore admits a request only when its worst case (prompt +
max_new_tokens, in cache pages) fits next to the requests already admitted, and at most
``max_active_requests`` at once; the others wait in FIFO order inside the engine (256 channels with
long histories queue instead of crashing). A request that could never fit is refused up front.
Pages are returned when a request finishes, fails or is cancelled.

``TransformersEngine.from_loaded(model, tokenizer)`` serves a model already in memory (benchmarks,
demos, tests): any object with ``decode`` (plus ``encode``/``render_chat`` for the service) works
as the tokenizer, so prompt token ids and a minimal tokenizer are enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import socket
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bot.errors import ConfigError, EngineClosedError, GenerationError, ModelNotFoundError
from bot.generation.decoding import IncrementalDecoder, StopMatcher
from bot.generation.engine import (
    NOT_STARTED,
    EngineHealth,
    GenerationRequest,
    SamplingParams,
    StartedState,
    Tokenizer,
    checked_max_new_tokens,
)
from bot.generation.solar import DEFAULT_MODEL_ID, SOLAR_CHAT_TEMPLATE, STOP_HEADERS
from bot.generation.warmup import WarmupProgress

logger = logging.getLogger(__name__)

DType = Literal["float16", "bfloat16", "float32", "auto"]

# On CPU the default cache is sized from free RAM (~14 GB); these keep it small.
CPU_CACHE_BLOCKS = 64
CPU_MAX_BATCH_TOKENS = 256
# Temperatures below this are clamped: dividing logits by ~0 gives inf and NaN probabilities,
# which would kill the generation thread for every request.
MIN_TEMPERATURE = 0.01
# How long a quick check of the hub may take before we call it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
STOP_TIMEOUT_S = 10.0
# Requests admitted to the batch at once unless SOLARBOT_MAX_ACTIVE_REQUESTS says otherwise.
DEFAULT_MAX_ACTIVE_GPU = 128
DEFAULT_MAX_ACTIVE_CPU = 32
# Share of free GPU memory (after the weights) given to the KV cache: the rest is headroom for
# activations, logits, CUDA graphs and the allocator.
DEFAULT_KV_MEMORY_FRACTION = 0.8
# Pages kept free for the scheduler's own safety margin.
RESERVED_CACHE_PAGES = 1


class HFTokenizer:
    """The ``Tokenizer`` protocol over a Hugging Face tokenizer."""

    def __init__(self, hf_tokenizer: Any) -> None:
        if not getattr(hf_tokenizer, "chat_template", None):
            hf_tokenizer.chat_template = SOLAR_CHAT_TEMPLATE
        self.hf: Any = hf_tokenizer

    @property
    def bos_token_id(self) -> int | None:
        value = self.hf.bos_token_id
        return None if value is None else int(value)

    @property
    def eos_token_id(self) -> int | None:
        value = self.hf.eos_token_id
        return None if value is None else int(value)

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        text = self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        # SOLAR's template has no BOS, so the tokenizer adds it; we add it ourselves so the result
        # does not depend on how the tokenizer's add_bos_token was saved.
        ids = [int(i) for i in self.hf(text, add_special_tokens=False).input_ids]
        bos = self.bos_token_id
        if add_bos and bos is not None:
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))


@dataclass
class _Active:
    """One request in flight."""

    request_id: str
    manager_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class _Signal:
    """Sentinels put on a request's queue by ``cancel`` and ``close``."""

    def __init__(self, name: str) -> None:
        self.name = name


_CANCELLED = _Signal("cancelled")
_CLOSED = _Signal("closed")


class _Admission:
    """FIFO admission by request count and KV-cache pages; lives on the engine's event loop."""

    def __init__(self, *, max_requests: int, pages: int | None, page_size: int) -> None:
        self.max_requests = max_requests
        self.pages = pages  # None: the cache size is unknown, only the request count is limited
        self.page_size = page_size
        self.active = 0
        self.used_pages = 0
        self.peak_waiting = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def pages_for(self, tokens: int) -> int:
        return 0 if self.pages is None else math.ceil(tokens / self.page_size)

    def _fits(self, pages: int) -> bool:
        if self.active >= self.max_requests:
            return False
        return self.pages is None or self.used_pages + pages <= self.pages

    async def acquire(self, pages: int) -> None:
        if not self._waiters and self._fits(pages):
            self._take(pages)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (pages, waiter)
        self._waiters.append(entry)
        self.peak_waiting = max(self.peak_waiting, len(self._waiters))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(pages)  # admitted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def _take(self, pages: int) -> None:
        self.active += 1
        self.used_pages += pages

    def release(self, pages: int) -> None:
        self.active -= 1
        self.used_pages -= pages
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            pages, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._take(pages)
            waiter.set_result(None)

    def fail_all(self, error: BaseException) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class TransformersEngine(StartedState):
    """SOLAR (or any causal LM with a chat template) served locally with continuous batching."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL_ID,
        dtype: DType = "auto",
        device: str = "auto",
        offline: bool = False,
        context_window: int | None = None,
        cache_blocks: int | None = None,
        max_batch_tokens: int | None = None,
        cuda_graphs: bool | None = None,
        compile_level: int | None = None,
        async_batching: bool | None = None,
        kv_memory_fraction: float | None = None,
        max_active_requests: int | None = None,
        ignore_eos: bool = False,
        stop_strings: Sequence[str] = STOP_HEADERS,
    ) -> None:
        """``cuda_graphs``/``compile_level``/``async_batching`` go to transformers'
        ``ContinuousBatchingConfig`` (None = its default); ``kv_memory_fraction`` is the share of
        free GPU memory for the KV cache when ``cache_blocks`` is not set; ``ignore_eos`` makes
        every request run to max_new_tokens (benchmarks)."""
        if dtype not in ("float16", "bfloat16", "float32", "auto"):
            raise ConfigError(
                f"SOLARBOT_DTYPE: must be float16, bfloat16, float32 or auto, not {dtype!r}"
            )
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"SOLARBOT_DEVICE: must be auto, cpu, cuda or cuda:N, not {device!r}")
        for name, value in (
            ("SOLARBOT_CONTEXT_WINDOW", context_window),
            ("SOLARBOT_CACHE_BLOCKS", cache_blocks),
            ("SOLARBOT_MAX_BATCH_TOKENS", max_batch_tokens),
            ("SOLARBOT_MAX_ACTIVE_REQUESTS", max_active_requests),
        ):
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: must be > 0")
        if compile_level is not None and not 0 <= compile_level <= 3:
            raise ConfigError("SOLARBOT_COMPILE_LEVEL: must be 0, 1, 2 or 3")
        if kv_memory_fraction is not None and not 0.0 < kv_memory_fraction < 1.0:
            raise ConfigError("SOLARBOT_KV_MEMORY_FRACTION: must be between 0 and 1")
        self._model_name = model
        self._dtype_setting: DType = dtype
        self._device_setting = device
        self._offline = offline
        self._context_window_setting = context_window
        self._cache_blocks = cache_blocks
        self._max_batch_tokens = max_batch_tokens
        self._cuda_graphs = cuda_graphs
        self._compile_level = compile_level
        self._async_batching = async_batching
        self._kv_memory_fraction = kv_memory_fraction
        self._max_active_requests = max_active_requests
        self._ignore_eos = ignore_eos
        self._stop_strings = tuple(stop_strings)
        self._preloaded: tuple[Any, Any] | None = None

        self._device = device
        self._tokenizer: Tokenizer | None = None
        self._admission: _Admission | None = None
        self.warmup_seconds: float | None = None
        self._model: Any = None
        self._manager: Any = None
        self._context_window: int | None = None
        self._eos_token_id: int | list[int] | None = None
        self._vocab_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._active: dict[str, _Active] = {}
        self._ids = itertools.count()

    # -- properties -------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_name

    @classmethod
    def from_loaded(
        cls, model: Any, tokenizer: Any, *, model_id: str | None = None, **kwargs: Any
    ) -> TransformersEngine:
        """An engine over a model already in memory (on its device, in its dtype). ``tokenizer``
        is a Hugging Face tokenizer or any object with ``decode`` (and ``encode``/``render_chat``
        if the conversation builder uses it); ``bos_token_id``/``eos_token_id`` are optional."""
        name, device = loaded_identity(model, model_id)
        engine = cls(model=name, device=device, **kwargs)
        engine._preloaded = (model, tokenizer)
        return engine

    @property
    def device(self) -> str:
        return self._device

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise EngineClosedError("the engine was closed; create a new one")
            if self._manager is not None:
                return
            self._loop = asyncio.get_running_loop()
            await asyncio.to_thread(self._load_and_start)
            self._admission = self._make_admission()

    def _load_and_start(self) -> None:
        """Blocking: load the tokenizer and the model, start the continuous batching thread."""
        device = _resolve_device(self._device_setting)
        on_gpu = device.startswith("cuda")
        if self._preloaded is not None:
            model, raw_tokenizer = self._preloaded
            self._preloaded = None
            tokenizer: Any = (
                HFTokenizer(raw_tokenizer)
                if hasattr(raw_tokenizer, "apply_chat_template")
                else raw_tokenizer
            )
            dtype = model.dtype
        else:
            dtype = _resolve_dtype(self._dtype_setting, on_gpu=on_gpu)
            model, tokenizer = self._load(dtype, device=device, on_gpu=on_gpu)
        self._start_manager(model, tokenizer, device=device, on_gpu=on_gpu, dtype=dtype)

    def _load(self, dtype: Any, *, device: str, on_gpu: bool) -> tuple[Any, HFTokenizer]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, local_only = self._locate_model()

        def load(loader: Callable[..., Any], **kwargs: Any) -> Any:
            try:
                return loader(source, local_files_only=local_only, **kwargs)
            except OSError as exc:
                raise ModelNotFoundError(self._not_found_message(str(exc).strip())) from exc
            except Exception as exc:
                raise GenerationError(f"could not load {self._model_name!r}: {exc}") from exc

        hf_tokenizer = load(AutoTokenizer.from_pretrained)
        model_kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
        if on_gpu:
            model_kwargs["device_map"] = {"": device}
        model = load(AutoModelForCausalLM.from_pretrained, **model_kwargs)
        return model, HFTokenizer(hf_tokenizer)

    def _start_manager(
        self, model: Any, tokenizer: Any, *, device: str, on_gpu: bool, dtype: Any
    ) -> None:
        import time

        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        bos_id = getattr(tokenizer, "bos_token_id", None)
        config = model.config
        self._vocab_size = int(config.vocab_size)
        max_positions = getattr(config, "max_position_embeddings", None)
        context_window = self._context_window_setting or max_positions or 4096
        if max_positions is not None and context_window > max_positions:
            logger.warning(
                "SOLARBOT_CONTEXT_WINDOW=%s exceeds the model's %s positions; using %s",
                context_window,
                max_positions,
                max_positions,
            )
            context_window = int(max_positions)

        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = config.eos_token_id
        if eos is None:
            eos = 2  # SOLAR's </s>
        # The engine always samples; greedy requests pass top_k=1 (see the module docstring).
        # Temperature must differ from 1.0 and top_p be < 1.0, or transformers creates no
        # processor for them and per-request values are refused.
        generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=True,
            temperature=0.7,
            top_k=self._vocab_size,
            top_p=0.95,
            eos_token_id=eos,
            bos_token_id=bos_id,
            pad_token_id=_first(model.generation_config.pad_token_id, eos),
            max_new_tokens=256,
        )
        cb_kwargs: dict[str, Any] = {"per_request_processors": True}
        if on_gpu:
            if self._cache_blocks is not None:
                cb_kwargs["num_blocks"] = self._cache_blocks
            else:
                cb_kwargs["max_memory_percent"] = (
                    self._kv_memory_fraction or DEFAULT_KV_MEMORY_FRACTION
                )
            if self._max_batch_tokens is not None:
                cb_kwargs["max_batch_tokens"] = self._max_batch_tokens
            if self._cuda_graphs is not None:
                cb_kwargs["use_cuda_graph"] = self._cuda_graphs
            if self._compile_level is not None:
                cb_kwargs["default_compile_level"] = self._compile_level
            if self._async_batching is not None:
                cb_kwargs["use_async_batching"] = self._async_batching
        else:
            cb_kwargs["num_blocks"] = self._cache_blocks or CPU_CACHE_BLOCKS
            cb_kwargs["max_batch_tokens"] = self._max_batch_tokens or CPU_MAX_BATCH_TOKENS
        cb_config = ContinuousBatchingConfig(**_supported(ContinuousBatchingConfig, cb_kwargs))
        began = time.perf_counter()
        try:
            manager = model.init_continuous_batching(
                generation_config=generation_config, continuous_batching_config=cb_config
            )
            if on_gpu:
                # Sizes the cache and captures CUDA graphs / compiles (when on) before any request.
                with (
                    WarmupProgress("warming up continuous batching", total=1) as progress,
                    progress.waiting(),
                ):
                    manager.warmup()
                    progress.advance()
            with torch.inference_mode():  # the generation thread inherits the caller's mode
                manager.start()
        except Exception as exc:
            raise GenerationError(f"could not start continuous batching: {exc}") from exc
        self.warmup_seconds = time.perf_counter() - began
        self._cb_config = getattr(manager, "continuous_batching_config", cb_config)

        self._device = device
        self._tokenizer = tokenizer
        self._model = model
        self._context_window = int(context_window)
        self._eos_token_id = eos
        self._manager = manager
        logger.info(
            "loaded %s on %s (%s), context window %s, warm-up %.1f s",
            self._model_name,
            device,
            str(dtype).removeprefix("torch."),
            context_window,
            self.warmup_seconds,
        )

    def _make_admission(self) -> _Admission:
        """Admission limits from the cache transformers actually allocated."""
        config = getattr(self, "_cb_config", None)
        blocks = getattr(config, "num_blocks", None)
        page_size = getattr(config, "page_size", None) or getattr(config, "block_size", None)
        pages: int | None = None
        if isinstance(blocks, int) and isinstance(page_size, int) and blocks > 0 and page_size > 0:
            pages = max(blocks - RESERVED_CACHE_PAGES, 1)
        else:
            logger.warning("KV cache size unknown: admission limits the request count only")
            page_size = 1
        on_gpu = self._device.startswith("cuda")
        limit = self._max_active_requests or (
            DEFAULT_MAX_ACTIVE_GPU if on_gpu else DEFAULT_MAX_ACTIVE_CPU
        )
        per_batch = getattr(config, "max_requests_per_batch", None)
        if self._max_active_requests is None and isinstance(per_batch, int) and per_batch > 0:
            limit = min(limit, per_batch)
        logger.info(
            "admission: %s requests at once, KV cache %s tokens",
            limit,
            "unknown" if pages is None else pages * page_size,
        )
        return _Admission(max_requests=limit, pages=pages, page_size=int(page_size))

    @property
    def max_concurrent_requests(self) -> int:
        if self._admission is not None:
            return self._admission.max_requests
        on_gpu = self._device.startswith("cuda")
        return self._max_active_requests or (
            DEFAULT_MAX_ACTIVE_GPU if on_gpu else DEFAULT_MAX_ACTIVE_CPU
        )

    @property
    def cache_tokens(self) -> int | None:
        """How many tokens the KV cache holds for admitted requests (None before start)."""
        admission = self._admission
        if admission is None or admission.pages is None:
            return None
        return admission.pages * admission.page_size

    def _locate_model(self) -> tuple[str, bool]:
        """Where to load from, and whether to stay off the network. Fails fast when it cannot work."""
        name = self._model_name
        path = Path(name).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ModelNotFoundError(self._not_found_message(f"{path} is a file, not a folder"))
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(self._not_found_message(f"{path} has no config.json"))
            return str(path), True
        if _looks_like_path(name):
            raise ModelNotFoundError(self._not_found_message(f"there is no folder {path}"))
        if self._offline or _env_flag("HF_HUB_OFFLINE"):
            return name, True
        reason = _hub_unreachable()
        if reason is None:
            return name, False
        if _in_hub_cache(name):
            logger.warning(
                "the hub is unreachable (%s); loading %s from the local cache", reason, name
            )
            return name, True
        raise ModelNotFoundError(
            self._not_found_message(
                f"it is not in the local Hugging Face cache and the hub is unreachable ({reason})"
            )
        )

    def _not_found_message(self, reason: str) -> str:
        offline = "SOLARBOT_OFFLINE=true, so only local files are used. " if self._offline else ""
        return (
            f"Model {self._model_name!r} not found: {reason}. {offline}"
            "Set SOLARBOT_MODEL to a local folder holding the model (config.json, tokenizer files, "
            "weights), or a Hugging Face hub id with the hub reachable and SOLARBOT_OFFLINE=false "
            "(the first download of SOLAR is ~21 GB)."
        )

    async def close(self) -> None:
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            manager, self._manager = self._manager, None
            if self._admission is not None:
                self._admission.fail_all(
                    EngineClosedError("the engine was closed while the request was queued")
                )
            for active in list(self._active.values()):
                if manager is not None:
                    manager.cancel_request(active.manager_id)
                _post(active, _CLOSED)
            if manager is not None:
                await asyncio.to_thread(manager.stop, block=True, timeout=STOP_TIMEOUT_S)

    # -- requests ---------------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        self._running_manager()
        if asyncio.get_running_loop() is not self._loop:
            raise GenerationError(
                "TransformersEngine must be used from the event loop that started it"
            )
        prompt = [int(i) for i in request.prompt_ids]
        max_new_tokens = self._check_request(request, prompt)
        if request.request_id in self._active:
            raise GenerationError(f"request {request.request_id!r} is already generating")
        admission = self._admission
        assert admission is not None  # set by start()
        if admission.pages is not None:
            room = admission.pages * admission.page_size - len(prompt)
            if room <= 0:
                raise GenerationError(
                    f"the prompt has {len(prompt)} tokens; the KV cache holds "
                    f"{admission.pages * admission.page_size} (raise SOLARBOT_CACHE_BLOCKS)"
                )
            max_new_tokens = min(max_new_tokens, room)
        pages = admission.pages_for(len(prompt) + max_new_tokens)
        # Wait for room in the batch (FIFO). Cancelled while waiting: nothing to free.
        await admission.acquire(pages)
        try:
            # aclosing: closing this stream must close the inner one at once (and free its cache).
            async with contextlib.aclosing(
                self._generate(request, prompt, max_new_tokens)
            ) as inner:
                async for delta in inner:
                    yield delta
        finally:
            admission.release(pages)

    async def _generate(
        self, request: GenerationRequest, prompt: list[int], max_new_tokens: int
    ) -> AsyncGenerator[str, None]:
        manager = self._running_manager()
        tokenizer = self.tokenizer
        loop = asyncio.get_running_loop()
        if request.request_id in self._active:
            raise GenerationError(f"request {request.request_id!r} is already generating")

        # Unique per call, so a late cancellation can never hit a newer request with the same id.
        active = _Active(
            request_id=request.request_id,
            manager_id=f"{request.request_id}#{next(self._ids)}",
            loop=loop,
        )
        self._active[request.request_id] = active
        finished = False
        try:
            # Register before add_request, or the first outputs go to the manager's shared queue.
            manager.register_result_handler(active.manager_id, lambda out: _post(active, out))
            added = manager.add_request(
                prompt,
                request_id=active.manager_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=-1 if self._ignore_eos else self._eos_token_id,
                **self._sampling_kwargs(request.sampling),
            )
            if added is None:
                finished = True
                raise GenerationError(
                    "the generation thread is not accepting requests (stopping or dead)"
                )

            decoder = IncrementalDecoder(tokenizer)
            matcher = StopMatcher(self._stop_strings)
            while True:
                item = await active.queue.get()
                if item is _CANCELLED:
                    return
                if item is _CLOSED:
                    finished = True
                    raise EngineClosedError("the engine was closed while generating")
                if item.error is not None or int(item.status) == _FAILED:
                    finished = True
                    raise GenerationError(f"generation failed: {item.error or 'unknown error'}")
                done = bool(item.is_finished())
                text = decoder.feed_cumulative(item.generated_tokens)
                if done:
                    text += decoder.finish()
                result = matcher.feed(text)
                if result.text:
                    yield result.text
                if result.stopped:
                    return  # the finally block cancels it unless it had finished anyway
                if done:
                    finished = True
                    rest = matcher.flush()
                    if rest:
                        yield rest
                    return
        finally:
            self._active.pop(request.request_id, None)
            if not finished:
                # Stop header, consumer broke out, task cancelled or engine.cancel(): free the cache.
                manager.cancel_request(active.manager_id)
            _drop_handler(manager, active.manager_id)

    async def cancel(self, request_id: str) -> None:
        active = self._active.get(request_id)
        if active is None:
            return
        if self._manager is not None:
            self._manager.cancel_request(active.manager_id)
        _post(active, _CANCELLED)

    def health(self) -> EngineHealth:
        manager = self._manager
        detail = ""
        if self._closed:
            detail = "closed"
        elif manager is None:
            detail = "not started"
        elif not manager.is_running():
            error = getattr(manager.background_thread_status, "fatal_error", None)
            detail = f"generation thread stopped: {error}" if error else "generation thread stopped"
        return EngineHealth(
            ready=not detail,
            model_id=self._model_name,
            device=self._device,
            active_requests=len(self._active),
            detail=detail,
        )

    @property
    def queued_requests(self) -> int:
        """Requests waiting for room in the batch (admission control)."""
        return 0 if self._admission is None else self._admission.waiting

    @property
    def peak_queued_requests(self) -> int:
        """The most requests ever waiting for room at once."""
        return 0 if self._admission is None else self._admission.peak_waiting

    # -- helpers ----------------------------------------------------------------------------------

    def _running_manager(self) -> Any:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._manager is None:
            raise EngineClosedError(NOT_STARTED)
        if not self._manager.is_running():
            raise GenerationError(self.health().detail)
        return self._manager

    def _check_request(self, request: GenerationRequest, prompt: list[int]) -> int:
        """Validate a request; return its max_new_tokens, shortened to fit the context window."""
        return checked_max_new_tokens(
            prompt,
            max_new_tokens=request.max_new_tokens,
            context_window=self.context_window,
            vocab_size=self._vocab_size,
        )

    def _sampling_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        if sampling.greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        top_p = float(sampling.top_p)
        if not 0.0 < top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {top_p}")
        return {
            "temperature": max(float(sampling.temperature), MIN_TEMPERATURE),
            "top_k": self._vocab_size,
            "top_p": top_p,
        }


# RequestStatus.FAILED, without importing transformers at module import time.
_FAILED = 4


def _post(active: _Active, item: Any) -> None:
    """Put an output or a signal on a request's queue, from any thread."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is active.loop:
        active.queue.put_nowait(item)
    elif not active.loop.is_closed():
        active.loop.call_soon_threadsafe(active.queue.put_nowait, item)


def _supported(config_cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop options this transformers version's ContinuousBatchingConfig does not have."""
    try:
        names = {f.name for f in dataclasses.fields(config_cls)}
    except TypeError:
        return kwargs
    dropped = sorted(set(kwargs) - names)
    if dropped:
        logger.warning("this transformers version ignores continuous batching options %s", dropped)
    return {key: value for key, value in kwargs.items() if key in names}


def _first(pad: Any, eos: int | list[int]) -> int:
    """The pad id: the model's own, else the (first) EOS id."""
    if pad is not None:
        return int(pad)
    return eos if isinstance(eos, int) else int(eos[0])


def _drop_handler(manager: Any, manager_id: str) -> None:
    """Unregister a result handler. transformers drops it only when a request finishes, not when
    it is cancelled; this reaches into its router to avoid keeping one per cancelled request."""
    router = getattr(manager, "output_router", None)
    handlers = getattr(router, "result_handlers", None)
    lock = getattr(router, "_lock", None)
    if isinstance(handlers, dict) and lock is not None:
        with lock:
            handlers.pop(manager_id, None)


def _resolve_device(setting: str) -> str:
    import torch

    if setting == "cpu":
        return "cpu"
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "cuda:0" if cuda else "cpu"
    if not cuda:
        raise ConfigError(f"SOLARBOT_DEVICE: {setting} asked for, but CUDA is not available here")
    index = 0 if setting == "cuda" else _cuda_index(setting)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"SOLARBOT_DEVICE: {setting} does not exist ({torch.cuda.device_count()} GPUs)"
        )
    return f"cuda:{index}"


def loaded_identity(model: Any, model_id: str | None) -> tuple[str, str]:
    """(model id, device) of a model already in memory: ``model_id``, else its ``name_or_path``."""
    name = model_id or str(getattr(model.config, "name_or_path", "") or "in-memory-model")
    return name, str(getattr(model, "device", "cpu"))


def _cuda_index(setting: str) -> int:
    try:
        return int(setting.removeprefix("cuda:"))
    except ValueError:
        raise ConfigError(f"SOLARBOT_DEVICE: bad GPU index in {setting!r}") from None


def _resolve_dtype(setting: DType, *, on_gpu: bool) -> Any:
    import torch

    if not on_gpu:
        if setting not in ("float32", "auto"):
            logger.warning("SOLARBOT_DTYPE=%s ignored on CPU: using float32", setting)
        return torch.float32
    return {
        "auto": torch.float16,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
    }[setting]


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else must be a local folder."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def _hub_unreachable() -> str | None:
    """None if the hub answers a TCP connection quickly, else why not (instead of ~25 s of retries)."""
    try:
        from huggingface_hub import constants

        endpoint = str(constants.ENDPOINT)
    except Exception:
        endpoint = "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with contextlib.closing(
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S)
        ):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
