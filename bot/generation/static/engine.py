"""The static engine's async front: the ``Engine`` protocol over a ``DecodeRunner`` (runner.py)
driven by a ``SlotScheduler`` (scheduler.py) on its own thread.

The asyncio side only puts requests/cancellations on a queue and receives each step's tokens
through one ``call_soon_threadsafe`` per step; text deltas are made by ``streaming.stream_text``
like in the local engine. Loading goes through ``loading.load``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

from bot.errors import ConfigError, EngineClosedError, GenerationError
from bot.generation.engine import (
    NOT_STARTED,
    EngineHealth,
    GenerationRequest,
    StartedState,
    Tokenizer,
    checked_max_new_tokens,
)
from bot.generation.loading import load, preloaded_options
from bot.generation.options import DEFAULT_KV_MEMORY_FRACTION, LocalEngineOptions
from bot.generation.static.runner import DecodeRunner
from bot.generation.static.scheduler import SlotRequest, SlotScheduler, Step
from bot.generation.streaming import TokenChunk, stream_text

logger = logging.getLogger(__name__)

CPU_SLOTS = 16
MAX_GPU_SLOTS = 128
# Bytes kept free besides the cache: prefill activations, logits, graphs, allocator slack.
GPU_HEADROOM_BYTES = 6 * 1024**3
STOP_TIMEOUT_S = 10.0


class _Closed:
    pass


_CLOSED = _Closed()


class _Cancelled:
    pass


_CANCELLED = _Cancelled()


class StaticCacheEngine(StartedState):
    """SOLAR (any Llama-shaped causal LM) served by our own batched decode loop; see the module doc."""

    def __init__(self, options: LocalEngineOptions | None = None) -> None:
        """``options``: what to load and how to serve it (checked when it was built)."""
        self.options = options or LocalEngineOptions()
        self._model_name = self.options.model
        self._context_window_setting = self.options.context_window
        self._cuda_graphs = True if self.options.cuda_graphs is None else self.options.cuda_graphs
        self._kv_memory_fraction = self.options.kv_memory_fraction or DEFAULT_KV_MEMORY_FRACTION
        self._preloaded: tuple[Any, Any] | None = None

        self._device = self.options.device
        self._tokenizer: Tokenizer | None = None
        self._runner: DecodeRunner | None = None
        self._scheduler: SlotScheduler | None = None
        self._context_window: int | None = None
        self._vocab_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._fatal: BaseException | None = None
        self._active: dict[str, SlotRequest] = {}
        self._eos: set[int] = set()
        self.warmup_seconds: float | None = None

    @classmethod
    def from_loaded(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str | None = None,
        options: LocalEngineOptions | None = None,
    ) -> StaticCacheEngine:
        """An engine over a model already in memory; see ``TransformersEngine.from_loaded``."""
        engine = cls(preloaded_options(model, model_id, options))
        engine._preloaded = (model, tokenizer)
        return engine

    # -- properties --------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_name

    @property
    def device(self) -> str:
        return self._device

    @property
    def cache_tokens(self) -> int | None:
        runner = self._runner
        return None if runner is None else runner.slots * runner.max_len

    @property
    def slots(self) -> int | None:
        return None if self._runner is None else self._runner.slots

    @property
    def max_concurrent_requests(self) -> int:
        if self._runner is not None:
            return self._runner.slots
        on_gpu = self._device.startswith("cuda")
        return self.options.max_active_requests or (MAX_GPU_SLOTS if on_gpu else CPU_SLOTS)

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured for the decode step (0 on CPU or when capture failed)."""
        return 0 if self._runner is None else len(self._runner.graphs)

    @property
    def graph_error(self) -> str | None:
        return None if self._runner is None else self._runner.graph_error

    @property
    def compiled(self) -> bool:
        return self._runner is not None and self._runner.compiled

    @property
    def compile_error(self) -> str | None:
        return None if self._runner is None else self._runner.compile_error

    @property
    def queued_requests(self) -> int:
        """Requests waiting for a free slot."""
        return 0 if self._scheduler is None else self._scheduler.waiting_count

    @property
    def peak_queued_requests(self) -> int:
        """The most requests ever waiting for a slot at once."""
        return 0 if self._scheduler is None else self._scheduler.peak_waiting

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise EngineClosedError("the engine was closed; create a new one")
            if self._thread is not None:
                return
            self._loop = asyncio.get_running_loop()
            began = time.perf_counter()
            model, tokenizer, device = await asyncio.to_thread(self._load)
            self._thread = threading.Thread(
                target=self._run, args=(model, device), name="solarbot-static-engine", daemon=True
            )
            self._thread.start()
            await asyncio.to_thread(self._ready.wait)
            if self._fatal is not None:
                raise GenerationError(f"could not start the engine: {self._fatal}")
            self._tokenizer = tokenizer
            self.warmup_seconds = time.perf_counter() - began
            logger.info(
                "static engine: %s on %s, %s slots x %s tokens, %s CUDA graphs, ready in %.1f s",
                self._model_name,
                device,
                self.slots,
                self._context_window,
                len(self._runner.graphs) if self._runner else 0,
                self.warmup_seconds,
            )

    def _load(self) -> tuple[Any, Tokenizer, str]:
        preloaded, self._preloaded = self._preloaded, None
        loaded = load(self.options, preloaded=preloaded)
        model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
        config = model.config
        if not all(hasattr(model, name) for name in ("model", "lm_head")) or not hasattr(
            model.model, "rotary_emb"
        ):
            raise ConfigError(
                f"the static engine serves Llama-shaped models (SOLAR); {type(model).__name__} "
                "is not one: use SOLARBOT_ENGINE=local"
            )
        self._vocab_size = int(config.vocab_size)
        self._context_window = loaded.context_window
        self._device = device
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = config.eos_token_id
        self._eos = (
            set() if eos is None else {int(e) for e in ([eos] if isinstance(eos, int) else eos)}
        )
        return model, tokenizer, device

    def _slot_count(self, model: Any, device: str, max_len: int) -> int:
        import torch

        config = model.config
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        per_slot = 2 * config.num_hidden_layers * kv_heads * head_dim * max_len
        per_slot *= model.dtype.itemsize
        if not device.startswith("cuda"):
            return self.options.max_active_requests or CPU_SLOTS
        torch.cuda.empty_cache()  # blocks cached by earlier work are free memory too
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        budget = int((free - GPU_HEADROOM_BYTES) * self._kv_memory_fraction)
        fits = max(budget // per_slot, 0)
        wanted = self.options.max_active_requests or MAX_GPU_SLOTS
        if fits < 1:
            raise GenerationError(
                f"no GPU memory for even one {max_len}-token KV cache slot "
                f"({per_slot / 1024**3:.2f} GiB): lower SOLARBOT_CONTEXT_WINDOW"
            )
        if fits < wanted:
            logger.warning(
                "KV cache: room for %s of %s slots (%s tokens each)", fits, wanted, max_len
            )
        return int(min(fits, wanted))

    async def close(self) -> None:
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            for request in list(self._active.values()):
                _put(request.target, _CLOSED)
            thread = self._thread
            if thread is not None:
                self._inbox.put(("stop", None))
                await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
            self._runner = None
            with contextlib.suppress(Exception):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    # -- requests ----------------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        self._check_running()
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            raise GenerationError(
                "StaticCacheEngine must be used from the event loop that started it"
            )
        prompt = [int(i) for i in request.prompt_ids]
        max_new = checked_max_new_tokens(
            prompt,
            max_new_tokens=request.max_new_tokens,
            context_window=self.context_window,
            vocab_size=self._vocab_size,
        )
        if request.request_id in self._active:
            raise GenerationError(f"request {request.request_id!r} is already generating")
        sampling = request.sampling
        top_p = float(sampling.top_p)
        if not sampling.greedy and not 0.0 < top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {top_p}")
        state = SlotRequest(
            prompt=prompt,
            max_new=max_new,
            temperature=0.0 if sampling.greedy else float(sampling.temperature),
            top_p=top_p,
            target=asyncio.Queue(),
        )
        self._active[request.request_id] = state
        finished = False

        async def chunks() -> AsyncGenerator[TokenChunk, None]:
            nonlocal finished
            while True:
                item = await state.target.get()
                if item is _CANCELLED:
                    return
                if item is _CLOSED or self._closed:
                    finished = True
                    raise EngineClosedError("the engine was closed while generating")
                if isinstance(item, BaseException):
                    finished = True
                    raise GenerationError(f"generation failed: {item}") from item
                ids, done = item
                finished = finished or done
                yield TokenChunk(ids=ids, done=done)

        try:
            self._inbox.put(("add", state))
            async with contextlib.aclosing(
                stream_text(
                    chunks(), tokenizer=self.tokenizer, stop_strings=self.options.stop_strings
                )
            ) as texts:
                async for text in texts:
                    yield text
        finally:
            self._active.pop(request.request_id, None)
            if not finished:
                self._inbox.put(("cancel", state))  # frees its slot (or its place in the queue)

    async def cancel(self, request_id: str) -> None:
        state = self._active.get(request_id)
        if state is None:
            return
        self._inbox.put(("cancel", state))
        _put(state.target, _CANCELLED)

    def health(self) -> EngineHealth:
        detail = ""
        if self._closed:
            detail = "closed"
        elif self._thread is None:
            detail = "not started"
        elif self._fatal is not None or not self._thread.is_alive():
            detail = f"generation thread stopped: {self._fatal}" if self._fatal else "stopped"
        return EngineHealth(
            ready=not detail,
            model_id=self._model_name,
            device=self._device,
            active_requests=len(self._active),
            detail=detail,
        )

    def _check_running(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._thread is None:
            raise EngineClosedError(NOT_STARTED)
        if self._fatal is not None or not self._thread.is_alive():
            raise GenerationError(self.health().detail)

    # -- the generation thread ---------------------------------------------------------------------

    def _run(self, model: Any, device: str) -> None:
        import torch

        try:
            with torch.inference_mode():
                max_len = int(self._context_window or 4096)
                runner = DecodeRunner(
                    model,
                    slots=self._slot_count(model, device, max_len),
                    max_len=max_len,
                    device=device,
                    cuda_graphs=self._cuda_graphs,
                    eos=set() if self.options.ignore_eos else self._eos,
                    prefill_tokens=self.options.prefill_tokens,
                    compile_decode=self.options.compile_decode,
                )
                runner.capture()
                scheduler = SlotScheduler(runner)
                self._runner, self._scheduler = runner, scheduler
                self._ready.set()
                self._loop_body(scheduler)
        except BaseException as exc:
            logger.exception("static engine: the generation thread died")
            self._fatal = exc
            self._ready.set()
            loop = self._loop
            if loop is not None and not loop.is_closed():
                error = GenerationError(f"the generation thread died: {exc}")
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._fail_all, error)

    def _fail_all(self, error: BaseException) -> None:
        for request in list(self._active.values()):
            _put(request.target, error)

    def _loop_body(self, scheduler: SlotScheduler) -> None:
        while True:
            block = scheduler.idle
            while True:  # drain the inbox (block only when idle)
                try:
                    kind, payload = self._inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if kind == "stop":
                    return
                if kind == "add":
                    scheduler.add(payload)
                elif kind == "cancel":
                    scheduler.cancel(payload)
            scheduler.step(self._deliver)

    def _deliver(self, step: Step) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver_step, step)


def _deliver_step(step: Step) -> None:
    for target, ids, done in step.items:
        target.put_nowait((ids, done))


def _put(target: asyncio.Queue[Any], item: Any) -> None:
    target.put_nowait(item)
