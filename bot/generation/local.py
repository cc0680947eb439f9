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
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from bot.errors import EngineClosedError, GenerationError
from bot.generation.engine import (
    NOT_STARTED,
    EngineHealth,
    GenerationRequest,
    SamplingParams,
    StartedState,
    Tokenizer,
    checked_max_new_tokens,
)
from bot.generation.loading import LoadedModel, load, preloaded_options
from bot.generation.options import (
    DEFAULT_KV_MEMORY_FRACTION,
    MIN_TEMPERATURE,
    LocalEngineOptions,
)
from bot.generation.streaming import TokenChunk, stream_text
from bot.generation.warmup import WarmupProgress

logger = logging.getLogger(__name__)

# On CPU the default cache is sized from free RAM (~14 GB); these keep it small.
CPU_CACHE_BLOCKS = 64
CPU_MAX_BATCH_TOKENS = 256
STOP_TIMEOUT_S = 10.0
# Requests admitted to the batch at once unless SOLARBOT_MAX_ACTIVE_REQUESTS says otherwise.
DEFAULT_MAX_ACTIVE_GPU = 128
DEFAULT_MAX_ACTIVE_CPU = 32
# Pages kept free for the scheduler's own safety margin.
RESERVED_CACHE_PAGES = 1


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

    def __init__(self, options: LocalEngineOptions | None = None) -> None:
        """``options``: what to load and how to serve it (checked when it was built)."""
        self.options = options or LocalEngineOptions()
        self._model_name = self.options.model
        self._context_window_setting = self.options.context_window
        self._preloaded: tuple[Any, Any] | None = None

        self._device = self.options.device
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
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str | None = None,
        options: LocalEngineOptions | None = None,
    ) -> TransformersEngine:
        """An engine over a model already in memory (on its device, in its dtype). ``tokenizer``
        is a Hugging Face tokenizer or any object with ``decode`` (and ``encode``/``render_chat``
        if the conversation builder uses it); ``bos_token_id``/``eos_token_id`` are optional.
        ``options.model`` and ``options.device`` are replaced by the model's own."""
        engine = cls(preloaded_options(model, model_id, options))
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
        preloaded, self._preloaded = self._preloaded, None
        loaded = load(self.options, preloaded=preloaded)
        self._start_manager(loaded)

    def _start_manager(self, loaded: LoadedModel) -> None:
        import time

        import torch
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
        on_gpu = device.startswith("cuda")
        options = self.options
        bos_id = getattr(tokenizer, "bos_token_id", None)
        config = model.config
        self._vocab_size = int(config.vocab_size)
        context_window = loaded.context_window

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
            if options.cache_blocks is not None:
                cb_kwargs["num_blocks"] = options.cache_blocks
            else:
                cb_kwargs["max_memory_percent"] = (
                    options.kv_memory_fraction or DEFAULT_KV_MEMORY_FRACTION
                )
            if options.max_batch_tokens is not None:
                cb_kwargs["max_batch_tokens"] = options.max_batch_tokens
            if options.cuda_graphs is not None:
                cb_kwargs["use_cuda_graph"] = options.cuda_graphs
            if options.compile_level is not None:
                cb_kwargs["default_compile_level"] = options.compile_level
            if options.async_batching is not None:
                cb_kwargs["use_async_batching"] = options.async_batching
        else:
            cb_kwargs["num_blocks"] = options.cache_blocks or CPU_CACHE_BLOCKS
            cb_kwargs["max_batch_tokens"] = options.max_batch_tokens or CPU_MAX_BATCH_TOKENS
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
            str(loaded.dtype).removeprefix("torch."),
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
        max_active = self.options.max_active_requests
        limit = max_active or (DEFAULT_MAX_ACTIVE_GPU if on_gpu else DEFAULT_MAX_ACTIVE_CPU)
        per_batch = getattr(config, "max_requests_per_batch", None)
        if max_active is None and isinstance(per_batch, int) and per_batch > 0:
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
        return self.options.max_active_requests or (
            DEFAULT_MAX_ACTIVE_GPU if on_gpu else DEFAULT_MAX_ACTIVE_CPU
        )

    @property
    def cache_tokens(self) -> int | None:
        """How many tokens the KV cache holds for admitted requests (None before start)."""
        admission = self._admission
        if admission is None or admission.pages is None:
            return None
        return admission.pages * admission.page_size

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

        async def chunks() -> AsyncGenerator[TokenChunk, None]:
            nonlocal finished
            fed = 0
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
                tokens = item.generated_tokens
                if len(tokens) < fed:
                    raise GenerationError("the generated tokens shrank between two outputs")
                finished = finished or done
                yield TokenChunk(ids=tokens[fed:], done=done)
                fed = len(tokens)

        try:
            # Register before add_request, or the first outputs go to the manager's shared queue.
            manager.register_result_handler(active.manager_id, lambda out: _post(active, out))
            added = manager.add_request(
                prompt,
                request_id=active.manager_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=-1 if self.options.ignore_eos else self._eos_token_id,
                **self._sampling_kwargs(request.sampling),
            )
            if added is None:
                finished = True
                raise GenerationError(
                    "the generation thread is not accepting requests (stopping or dead)"
                )

            async with contextlib.aclosing(
                stream_text(chunks(), tokenizer=tokenizer, stop_strings=self.options.stop_strings)
            ) as texts:
                async for text in texts:
                    yield text
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
