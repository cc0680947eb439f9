"""The static-cache engine: our own continuous-batching decode loop for Llama-shaped models (SOLAR).

Why: transformers' continuous batching manager spends most of each step in Python and kernel
launches (on an H200: 8.8-19.8 tok/s for one channel where the memory-bandwidth limit is ~197).
This engine runs transformers' own modules (embeddings, projections, RMSNorm, rotary embedding,
MLP, ``apply_rotary_pos_emb``) in a decode loop shaped for serving:

- **Slots**: the KV cache is one static tensor per K and V, ``[layers, slots, kv_heads, max_len,
  head_dim]``, sized at start from free GPU memory (with headroom). Each admitted request owns one
  slot; active requests always occupy slots ``0..n-1`` (a finishing request's slot is refilled by
  moving the last one into it), so a decode step works on plain views of the cache, no gathers.
- **One decode step for all active conversations**: batch row i is slot i; each row writes its new
  K/V at its own position and attends to ``[0, position]`` through a length mask; attention reads
  only the first ``L`` cache positions (``L`` a bucket over the longest active conversation).
  Grouped-query attention without copying K/V: the query heads of one KV head are laid out as
  "query positions" of that head, so SDPA sees equal head counts.
- **Continuous batching**: between decode steps, waiting requests are admitted into free slots and
  prefilled together (right-padded, causal; a token budget per step), then join the next step.
  Requests that find no free slot wait in FIFO order (admission control: 256 channels queue, no OOM).
- **CUDA graphs**: on a GPU the decode step is captured once per (batch bucket, length bucket) at
  start-up (before ``start()`` returns), so a step is one graph replay instead of ~700 launches.
- **Sampling**: greedy (argmax, identical to ``generate(do_sample=False)``) or temperature/top-p per
  request; EOS ends a request (unless ``ignore_eos``, for benchmarks).

The loop runs on its own thread; the asyncio side only puts requests/cancellations on a queue and
receives each step's tokens through one ``call_soon_threadsafe`` per step. Text deltas are made with
the same ``IncrementalDecoder``/``StopMatcher`` as the other engines. On a CPU the same code runs
eagerly in float32 (tests check it token for token against ``generate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
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
from bot.generation.loading import load, loaded_identity
from bot.generation.options import (
    DEFAULT_KV_MEMORY_FRACTION,
    MIN_TEMPERATURE,
    LocalEngineOptions,
)
from bot.generation.streaming import TokenChunk, stream_text
from bot.generation.warmup import WarmupProgress

logger = logging.getLogger(__name__)

CPU_SLOTS = 16
MAX_GPU_SLOTS = 128
# Attention length buckets (the step reads the first L cache positions).
LENGTH_BUCKET = 256
# Bytes kept free besides the cache: prefill activations, logits, graphs, allocator slack.
GPU_HEADROOM_BYTES = 6 * 1024**3
STOP_TIMEOUT_S = 10.0


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    max_new: int
    temperature: float  # 0: greedy
    top_p: float
    deliver: asyncio.Queue[Any]
    slot: int = -1
    length: int = 0  # tokens in the cache
    generated: int = 0
    last: int = 0  # the newest token: the next step's input
    cancelled: bool = False


@dataclass
class _Step:
    """Tokens produced in one step, delivered to the loop in one callback."""

    items: list[tuple[asyncio.Queue[Any], list[int], bool]] = field(default_factory=list)


class _Closed:
    pass


_CLOSED = _Closed()


class _Cancelled:
    pass


_CANCELLED = _Cancelled()


def _buckets(limit: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    return sorted({s for s in sizes if s < limit} | {limit})


def _length_buckets(max_len: int) -> list[int]:
    """256-token steps up to 1024, then 512-token steps: few graphs, little wasted attention."""
    sizes = {LENGTH_BUCKET * i for i in range(1, 5)}
    sizes |= {2 * LENGTH_BUCKET * i for i in range(2, math.ceil(max_len / (2 * LENGTH_BUCKET)) + 1)}
    return sorted({min(size, max_len) for size in sizes if size < max_len} | {max_len})


def _rms_norm(x: Any, weight: Any, eps: float, fused: bool) -> Any:
    """LlamaRMSNorm's math (exact on the CPU), or PyTorch's fused kernel on the GPU."""
    import torch

    if fused:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _decode_pre(
    x: Any,
    norm: Any,
    wq: Any,
    bq: Any,
    wk: Any,
    bk: Any,
    wv: Any,
    bv: Any,
    cos: Any,
    sin: Any,
    eps: float,
    kv_heads: int,
    group: int,
    head_dim: int,
    fused: bool,
) -> tuple[Any, Any, Any]:
    """Decode step, before attention: norm, Q/K/V ([B, kv_heads, group|1, D]), rotary."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    linear = torch.nn.functional.linear
    batch = x.shape[0]
    h = _rms_norm(x, norm, eps, fused)
    q = linear(h, wq, bq).view(batch, kv_heads, group, head_dim)
    k = linear(h, wk, bk).view(batch, kv_heads, 1, head_dim)
    v = linear(h, wv, bv).view(batch, kv_heads, 1, head_dim)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def _decode_post(
    x: Any,
    attended: Any,
    wo: Any,
    bo: Any,
    norm: Any,
    wg: Any,
    bg: Any,
    wu: Any,
    bu: Any,
    wd: Any,
    bd: Any,
    eps: float,
    fused: bool,
) -> Any:
    """Decode step, after attention: output projection, residual, norm, SiLU MLP, residual."""
    import torch

    linear = torch.nn.functional.linear
    x = x + linear(attended.reshape(x.shape[0], 1, -1), wo, bo)
    h = _rms_norm(x, norm, eps, fused)
    return x + linear(torch.nn.functional.silu(linear(h, wg, bg)) * linear(h, wu, bu), wd, bd)


class _Runner:
    """Model, cache, graphs and the loop; everything here runs on the generation thread."""

    def __init__(
        self,
        model: Any,
        *,
        slots: int,
        max_len: int,
        device: str,
        cuda_graphs: bool,
        eos: set[int],
        prefill_tokens: int,
        compile_decode: bool = False,
    ) -> None:
        import torch

        self.torch = torch
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.lm_head
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.group = self.heads // self.kv_heads
        self.scaling = float(self.layers[0].self_attn.scaling)
        self.vocab = int(config.vocab_size)
        self.device = torch.device(device)
        self.dtype = model.dtype
        self.slots = slots
        self.max_len = max_len
        self.eos = eos
        self.prefill_tokens = prefill_tokens
        shape = (len(self.layers), slots, self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.batch_buckets = _buckets(slots)
        self.length_buckets = _length_buckets(max_len)
        # Static inputs of the decode step (graphs read them in place).
        self.ids = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.rows = torch.arange(slots, device=self.device)
        self.span = torch.arange(max_len, device=self.device)
        self.graphs: dict[tuple[int, int], tuple[Any, Any]] = {}
        self.graph_error: str | None = None
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ConfigError("the static engine needs a SiLU MLP (Llama/SOLAR)")
        # Per layer: the tensors the decode step reads, in _decode_pre/_decode_post order.
        self.pre_args: list[tuple[Any, ...]] = []
        self.post_args: list[tuple[Any, ...]] = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            ffn = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            self.pre_args.append(
                (layer.input_layernorm.weight, *(t for p in qkv for t in (p.weight, p.bias)))
            )
            self.post_args.append(
                (
                    attn.o_proj.weight,
                    attn.o_proj.bias,
                    layer.post_attention_layernorm.weight,
                    *(t for p in ffn for t in (p.weight, p.bias)),
                )
            )
        self.eps = float(self.layers[0].input_layernorm.variance_epsilon)
        # On the GPU: PyTorch's fused RMSNorm; on the CPU: LlamaRMSNorm's exact math.
        self.fused = self.device.type == "cuda"
        self.pre: Any = _decode_pre
        self.post: Any = _decode_post
        self.compile_error: str | None = None
        self.compiled = False
        if compile_decode:
            try:
                self.pre = torch.compile(_decode_pre, dynamic=True, fullgraph=True)
                self.post = torch.compile(_decode_post, dynamic=True, fullgraph=True)
                self.compiled = True
            except Exception as exc:  # pragma: no cover - depends on the installation
                self.compile_error = f"{type(exc).__name__}: {exc}"

    # -- the model ---------------------------------------------------------------------------------

    def decode_forward(self, batch: int, length: int) -> Any:
        """Logits (float32, [batch, vocab]) for rows/slots 0..batch-1; writes their K/V."""
        torch = self.torch
        ids = self.ids[:batch]
        pos = self.pos[:batch]
        rows = self.rows[:batch]
        x = self.embed(ids)[:, None, :]  # [B, 1, H]
        cos, sin = self.rotary(x, pos[:, None])  # [B, 1, D]
        visible = (self.span[None, :length] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, L]
        # An additive mask made once per step (SDPA would convert a boolean one in every layer).
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device)
        mask.masked_fill_(~visible, float("-inf"))
        for index in range(len(self.layers)):
            q, k, v = self.pre(
                x,
                *self.pre_args[index],
                cos,
                sin,
                self.eps,
                self.kv_heads,
                self.group,
                self.head_dim,
                self.fused,
            )
            k_cache = self.k[index, :batch]
            v_cache = self.v[index, :batch]
            k_cache[rows, :, pos] = k[:, :, 0]
            v_cache[rows, :, pos] = v[:, :, 0]
            out = torch.nn.functional.scaled_dot_product_attention(
                q,
                k_cache[:, :, :length],
                v_cache[:, :, :length],
                attn_mask=mask,
                scale=self.scaling,
            )  # [B, kv_heads, group, D]: the query heads of each KV head as its "positions"
            x = self.post(x, out, *self.post_args[index], self.eps, self.fused)
        return self.lm_head(self.norm(x[:, 0])).float()

    def prefill_forward(self, requests: list[_Request]) -> Any:
        """Prefill right-padded prompts into their slots; logits at each prompt's last token."""
        torch = self.torch
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        count = len(requests)
        lengths = [len(r.prompt) for r in requests]
        width = min(self.max_len, -(-max(lengths) // 8) * 8)
        ids = torch.zeros((count, width), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, : lengths[row]] = torch.tensor(request.prompt)
        ids = ids.to(self.device)
        slots = torch.tensor([r.slot for r in requests], device=self.device)
        pos = self.span[:width][None, :].expand(count, width)
        x = self.embed(ids)
        cos, sin = self.rotary(x, pos)
        for index, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(count, width, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(count, width, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(count, width, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[index, :, :, :width][slots] = k
            self.v[index, :, :, :width][slots] = v
            if self.group > 1:
                k = k.repeat_interleave(self.group, dim=1)
                v = v.repeat_interleave(self.group, dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scaling
            )
            out = out.transpose(1, 2).reshape(count, width, self.heads * self.head_dim)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = torch.tensor([n - 1 for n in lengths], device=self.device)
        hidden = x[torch.arange(count, device=self.device), last]
        return self.lm_head(self.norm(hidden)).float()

    def capture(self) -> None:
        """Compile (when asked) and capture the decode step for every (batch, length) bucket (GPU
        only). If compiling or capturing fails, the engine still serves without it, and says so
        (``compile_error``, ``graph_error``)."""
        if self.compiled:
            batches = sorted({1, self.batch_buckets[-1]})
            try:  # compiles now (batch 1 and a dynamic batch), not on the first request
                with WarmupProgress(
                    "compiling the decode step", total=len(batches), unit="shape"
                ) as progress:
                    for batch in batches:
                        self.decode_forward(batch, self.length_buckets[0])
                        progress.advance()
            except Exception as exc:
                logger.exception("static engine: torch.compile failed; decoding uncompiled")
                self.compile_error = f"{type(exc).__name__}: {exc}"
                self.pre, self.post, self.compiled = _decode_pre, _decode_post, False
        if not self.use_graphs:
            self.k.zero_()
            self.v.zero_()
            return
        try:
            self._capture()
        except Exception as exc:
            logger.exception("static engine: CUDA graph capture failed; decoding eagerly")
            self.graph_error = f"{type(exc).__name__}: {exc}"
            self.graphs.clear()
            self.torch.cuda.synchronize()
            # Compiled parts pay their guard checks on every call without graphs: eager is faster.
            self.pre, self.post, self.compiled = _decode_pre, _decode_post, False
        self.k.zero_()
        self.v.zero_()

    def _capture(self) -> None:
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # cuBLAS/cuDNN workspaces before the first capture
                self.decode_forward(self.batch_buckets[-1], self.length_buckets[-1])
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        options: dict[str, Any] = {"pool": pool}
        if "capture_error_mode" in inspect.signature(torch.cuda.graph.__init__).parameters:
            options["capture_error_mode"] = "thread_local"  # the event loop thread may run
        total = len(self.length_buckets) * len(self.batch_buckets)
        with WarmupProgress(
            "capturing the decode step's CUDA graphs", total=total, unit="graph"
        ) as progress:
            for length in reversed(self.length_buckets):  # largest first: the pool is reused
                for batch in reversed(self.batch_buckets):
                    with torch.cuda.stream(side):
                        self.decode_forward(batch, length)
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, **options):
                        out = self.decode_forward(batch, length)
                    self.graphs[(batch, length)] = (graph, out)
                    progress.advance()
            torch.cuda.synchronize()

    def decode(self, batch: int, length: int) -> Any:
        entry = self.graphs.get((batch, length))
        if entry is None:
            return self.decode_forward(batch, length)
        graph, out = entry
        graph.replay()
        return out

    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, logits: Any, requests: Sequence[_Request]) -> list[int]:
        torch = self.torch
        greedy = logits.argmax(dim=-1)
        if all(r.temperature <= 0 for r in requests):
            return [int(t) for t in greedy.tolist()]
        temps = torch.tensor(
            [max(r.temperature, MIN_TEMPERATURE) if r.temperature > 0 else 1.0 for r in requests],
            device=logits.device,
        )
        top_p = torch.tensor([r.top_p for r in requests], device=logits.device)
        probs = torch.softmax(logits / temps[:, None], dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        sorted_p[(sorted_p.cumsum(dim=-1) - sorted_p) > top_p[:, None]] = 0.0
        choice = order.gather(1, torch.multinomial(sorted_p, 1))[:, 0]
        is_greedy = torch.tensor([r.temperature <= 0 for r in requests], device=logits.device)
        return [int(t) for t in torch.where(is_greedy, greedy, choice).tolist()]

    # -- bookkeeping -------------------------------------------------------------------------------

    def move(self, source: int, target: int, length: int) -> None:
        """Copy a slot's first ``length`` cache positions into another slot."""
        self.k[:, target, :, :length] = self.k[:, source, :, :length]
        self.v[:, target, :, :length] = self.v[:, source, :, :length]


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
        self._runner: _Runner | None = None
        self._context_window: int | None = None
        self._vocab_size = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._fatal: BaseException | None = None
        self._active: dict[str, _Request] = {}
        self._waiting_count = 0
        self._eos: set[int] = set()
        self.warmup_seconds: float | None = None
        self.peak_queued_requests = 0  # the most requests ever waiting for a slot at once

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
        name, device = loaded_identity(model, model_id)
        engine = cls(
            dataclasses.replace(options or LocalEngineOptions(), model=name, device=device)
        )
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
        return self._waiting_count

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
                _put(request.deliver, _CLOSED)
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
        state = _Request(
            prompt=prompt,
            max_new=max_new,
            temperature=0.0 if sampling.greedy else float(sampling.temperature),
            top_p=top_p,
            deliver=asyncio.Queue(),
        )
        self._active[request.request_id] = state
        finished = False

        async def chunks() -> AsyncGenerator[TokenChunk, None]:
            nonlocal finished
            while True:
                item = await state.deliver.get()
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
        _put(state.deliver, _CANCELLED)

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
                runner = _Runner(
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
                self._runner = runner
                self._ready.set()
                self._loop_body(runner)
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
            _put(request.deliver, error)

    def _loop_body(self, runner: _Runner) -> None:
        waiting: deque[_Request] = deque()
        running: list[_Request] = []
        while True:
            block = not waiting and not running
            while True:  # drain the inbox (block only when idle)
                try:
                    kind, payload = self._inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if kind == "stop":
                    return
                if kind == "add":
                    waiting.append(payload)
                elif kind == "cancel":
                    payload.cancelled = True
            if any(r.cancelled for r in waiting):  # cancelled while queued: drop them
                kept = [r for r in waiting if not r.cancelled]
                waiting.clear()
                waiting.extend(kept)
            self._retire(runner, running, [r for r in running if r.cancelled])
            admitted = self._admit(runner, waiting, running)
            self._waiting_count = sum(1 for r in waiting if not r.cancelled)
            self.peak_queued_requests = max(self.peak_queued_requests, self._waiting_count)
            if admitted:
                step = _Step()
                logits = runner.prefill_forward(admitted)
                self._advance(runner, running, admitted, runner.sample(logits, admitted), step)
                self._deliver(step)  # first tokens out at once (TTFT)
            if running:  # one decode step for every active request, new ones included
                step = _Step()
                self._decode(runner, running, step)
                self._deliver(step)

    def _admit(
        self, runner: _Runner, waiting: deque[_Request], running: list[_Request]
    ) -> list[_Request]:
        """Requests to prefill now. Of the oldest waiting requests that free slots can take, the
        shortest go first, as many as fit the (right-padded) prefill budget: sorting keeps the
        padding small, and the window keeps it FIFO (a long prompt waits at most one window)."""
        free = runner.slots - len(running)
        window: list[_Request] = []
        for request in waiting:
            if len(window) >= free:
                break
            if not request.cancelled:
                window.append(request)
        if not window:
            return []
        window.sort(key=lambda r: len(r.prompt))
        admitted = window[:1]
        for request in window[1:]:
            if (len(admitted) + 1) * len(request.prompt) > runner.prefill_tokens:
                break
            admitted.append(request)
        chosen = {id(r) for r in admitted}
        kept = [r for r in waiting if id(r) not in chosen and not r.cancelled]
        waiting.clear()
        waiting.extend(kept)
        for request in admitted:
            request.slot = len(running)
            running.append(request)
        return admitted

    def _decode(self, runner: _Runner, running: list[_Request], step: _Step) -> None:
        torch = runner.torch
        # Newly prefilled requests already have their first token and join this step.
        count = len(running)
        batch = next(b for b in runner.batch_buckets if b >= count)
        longest = max(r.length for r in running) + 1
        length = next(b for b in runner.length_buckets if b >= longest)
        ids = [r.last for r in running] + [0] * (batch - count)
        pos = [r.length for r in running] + [0] * (batch - count)
        runner.ids[:batch].copy_(torch.tensor(ids), non_blocking=True)
        runner.pos[:batch].copy_(torch.tensor(pos), non_blocking=True)
        logits = runner.decode(batch, length)[:count]
        for request in running:
            request.length += 1  # the input token is in the cache now
        self._advance(runner, running, running, runner.sample(logits, running), step)

    def _advance(
        self,
        runner: _Runner,
        running: list[_Request],
        requests: list[_Request],
        tokens: list[int],
        step: _Step,
    ) -> None:
        done: list[_Request] = []
        for request, token in zip(requests, tokens, strict=True):
            if request.generated == 0:
                request.length = len(request.prompt)
            request.last = token
            request.generated += 1
            finished = (
                request.generated >= request.max_new
                or token in runner.eos
                or request.length >= runner.max_len
            )
            step.items.append((request.deliver, [token], finished))
            if finished:
                done.append(request)
        self._retire(runner, running, done)

    def _retire(self, runner: _Runner, running: list[_Request], done: list[_Request]) -> None:
        """Free the slots of finished/cancelled requests, keeping slots 0..n-1 occupied."""
        for request in sorted(done, key=lambda r: r.slot, reverse=True):
            slot = request.slot
            last = running[-1]
            if last is not request:
                runner.move(last.slot, slot, last.length)
                last.slot = slot
                running[slot] = last
            running.pop()
            request.slot = -1

    def _deliver(self, step: _Step) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver_step, step)


def _deliver_step(step: _Step) -> None:
    for target, ids, done in step.items:
        target.put_nowait((ids, done))


def _put(target: asyncio.Queue[Any], item: Any) -> None:
    target.put_nowait(item)
