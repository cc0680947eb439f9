"""The options of the engines that run the model here (``local`` and ``static``), in one typed,
frozen object built once by the service (``bot.service.build_engine``) and checked on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.errors import ConfigError
from bot.generation.solar import DEFAULT_MODEL_ID, STOP_HEADERS

DType = Literal["float16", "bfloat16", "float32", "auto"]

# Temperatures below this are clamped: dividing logits by ~0 gives inf and NaN probabilities,
# which would kill a generation thread for every request.
MIN_TEMPERATURE = 0.01
# Share of free GPU memory (after the weights) given to the KV cache: the rest is headroom for
# activations, logits, CUDA graphs and the allocator.
DEFAULT_KV_MEMORY_FRACTION = 0.8
# Prompt tokens the static engine prefills together in one forward pass (at least one request).
DEFAULT_PREFILL_TOKENS = 8192


@dataclass(frozen=True, kw_only=True)
class LocalEngineOptions:
    """What ``TransformersEngine`` and ``StaticCacheEngine`` are built from.

    ``max_new_tokens``: the longest reply the service asks for; start-up fails (one line naming the
    settings) when the model's context window leaves no room for it. ``ignore_eos`` makes every
    request run to its max_new_tokens (benchmarks).

    Only the local engine reads ``cache_blocks``/``max_batch_tokens``/``compile_level``/
    ``async_batching`` (transformers' ``ContinuousBatchingConfig``; None = its default); only the
    static engine reads ``prefill_tokens`` and ``compile_decode`` (torch.compile the per-layer parts
    of its decode step). ``cuda_graphs`` None: transformers' default (local), on (static).
    ``kv_memory_fraction``: the share of free GPU memory for the KV cache.
    """

    model: str = DEFAULT_MODEL_ID
    dtype: DType = "auto"
    device: str = "auto"
    offline: bool = False
    context_window: int | None = None
    max_new_tokens: int | None = None
    cuda_graphs: bool | None = None
    kv_memory_fraction: float | None = None
    max_active_requests: int | None = None
    ignore_eos: bool = False
    stop_strings: tuple[str, ...] = STOP_HEADERS
    # The local engine (transformers' continuous batching).
    cache_blocks: int | None = None
    max_batch_tokens: int | None = None
    compile_level: int | None = None
    async_batching: bool | None = None
    # The static engine (our decode loop).
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS
    compile_decode: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "bfloat16", "float32", "auto"):
            raise ConfigError(
                f"SOLARBOT_DTYPE: must be float16, bfloat16, float32 or auto, not {self.dtype!r}"
            )
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise ConfigError(f"SOLARBOT_DEVICE: must be auto, cpu, cuda or cuda:N, not {device!r}")
        for name, value in (
            ("SOLARBOT_CONTEXT_WINDOW", self.context_window),
            ("SOLARBOT_MAX_NEW_TOKENS", self.max_new_tokens),
            ("SOLARBOT_CACHE_BLOCKS", self.cache_blocks),
            ("SOLARBOT_MAX_BATCH_TOKENS", self.max_batch_tokens),
            ("SOLARBOT_MAX_ACTIVE_REQUESTS", self.max_active_requests),
        ):
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: must be > 0")
        if self.compile_level is not None and not 0 <= self.compile_level <= 3:
            raise ConfigError("SOLARBOT_COMPILE_LEVEL: must be 0, 1, 2 or 3")
        if self.kv_memory_fraction is not None and not 0.0 < self.kv_memory_fraction < 1.0:
            raise ConfigError("SOLARBOT_KV_MEMORY_FRACTION: must be between 0 and 1")
        if self.prefill_tokens <= 0:
            raise ConfigError("prefill_tokens must be > 0")
        # A list given for stop_strings would make the object unhashable and mutable.
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
