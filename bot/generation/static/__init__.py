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

Layout: ``runner.py`` (the model, the cache, the decode step, its buckets and CUDA graphs),
``scheduler.py`` (slots: admission, joins, retirement; tested on a CPU with a stand-in runner),
``engine.py`` (``StaticCacheEngine``, the asyncio front and the generation thread).
"""

from __future__ import annotations

from bot.generation.static.engine import StaticCacheEngine

__all__ = ["StaticCacheEngine"]
