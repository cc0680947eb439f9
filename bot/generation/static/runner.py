"""The static engine's runner: the model, the static KV cache, the decode step, its buckets and
CUDA-graph capture. Everything here runs on the generation thread.

- The KV cache is one static tensor per K and V, ``[layers, slots, kv_heads, max_len, head_dim]``.
  Batch row i of a decode step is slot i (the scheduler keeps active requests in slots 0..n-1).
- One decode step for all active conversations: each row writes its new K/V at its own position
  and attends to ``[0, position]`` through a length mask; attention reads only the first ``L``
  cache positions (``L`` a bucket over the longest active conversation). Grouped-query attention
  without copying K/V: the query heads of one KV head are laid out as "query positions" of that
  head, so SDPA sees equal head counts.
- CUDA graphs: on a GPU the decode step is captured once per (batch bucket, length bucket) at
  start-up, so a step is one graph replay instead of ~700 launches.
- Sampling: greedy (argmax, identical to ``generate(do_sample=False)``) or temperature/top-p per
  request.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

from bot.errors import ConfigError
from bot.generation.options import MIN_TEMPERATURE
from bot.generation.static.scheduler import SlotRequest
from bot.generation.warmup import WarmupProgress

logger = logging.getLogger(__name__)

# Attention length buckets (the step reads the first L cache positions).
LENGTH_BUCKET = 256


def batch_bucket_sizes(limit: int) -> list[int]:
    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    return sorted({s for s in sizes if s < limit} | {limit})


def length_bucket_sizes(max_len: int) -> list[int]:
    """256-token steps up to 1024, then 512-token steps: few graphs, little wasted attention."""
    sizes = {LENGTH_BUCKET * i for i in range(1, 5)}
    sizes |= {2 * LENGTH_BUCKET * i for i in range(2, math.ceil(max_len / (2 * LENGTH_BUCKET)) + 1)}
    return sorted({min(size, max_len) for size in sizes if size < max_len} | {max_len})


def rms_norm(x: Any, weight: Any, eps: float, fused: bool) -> Any:
    """LlamaRMSNorm's math (exact on the CPU), or PyTorch's fused kernel on the GPU."""
    import torch

    if fused:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def decode_pre(
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
    h = rms_norm(x, norm, eps, fused)
    q = linear(h, wq, bq).view(batch, kv_heads, group, head_dim)
    k = linear(h, wk, bk).view(batch, kv_heads, 1, head_dim)
    v = linear(h, wv, bv).view(batch, kv_heads, 1, head_dim)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def decode_post(
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
    h = rms_norm(x, norm, eps, fused)
    return x + linear(torch.nn.functional.silu(linear(h, wg, bg)) * linear(h, wu, bu), wd, bd)


class DecodeRunner:
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
        self.batch_buckets = batch_bucket_sizes(slots)
        self.length_buckets = length_bucket_sizes(max_len)
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
        # Per layer: the tensors the decode step reads, in decode_pre/decode_post order.
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
        self.pre: Any = decode_pre
        self.post: Any = decode_post
        self.compile_error: str | None = None
        self.compiled = False
        if compile_decode:
            try:
                self.pre = torch.compile(decode_pre, dynamic=True, fullgraph=True)
                self.post = torch.compile(decode_post, dynamic=True, fullgraph=True)
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

    def prefill_forward(self, requests: list[SlotRequest]) -> Any:
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
                self.pre, self.post, self.compiled = decode_pre, decode_post, False
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
            self.pre, self.post, self.compiled = decode_pre, decode_post, False
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

    def decode_step(self, tokens: Sequence[int], positions: Sequence[int]) -> Any:
        """Logits for slots ``0..len(tokens)-1`` (see ``scheduler.Runner``): the smallest captured
        (batch, length) bucket that holds them, padded; one graph replay on a GPU."""
        torch = self.torch
        count = len(tokens)
        batch = next(b for b in self.batch_buckets if b >= count)
        longest = max(positions) + 1
        length = next(b for b in self.length_buckets if b >= longest)
        padding = [0] * (batch - count)
        self.ids[:batch].copy_(torch.tensor([*tokens, *padding]), non_blocking=True)
        self.pos[:batch].copy_(torch.tensor([*positions, *padding]), non_blocking=True)
        return self.decode(batch, length)[:count]

    def decode(self, batch: int, length: int) -> Any:
        entry = self.graphs.get((batch, length))
        if entry is None:
            return self.decode_forward(batch, length)
        graph, out = entry
        graph.replay()
        return out

    # -- sampling ----------------------------------------------------------------------------------

    def sample(self, logits: Any, requests: Sequence[SlotRequest]) -> list[int]:
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
