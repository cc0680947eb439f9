"""GPU memory of this process, per CUDA device, as torch's caching allocator counts it.

Read by the ``solarbot_gpu_memory*`` gauges (bot/metrics.py) and checked against torch by
bench/gpu.py on a GPU. Depends on nothing: it never imports torch (a process without a model, such
as ``--role adapters``, reports nothing) and never initialises CUDA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuMemory:
    allocated: int  # bytes in live tensors
    reserved: int  # bytes the caching allocator holds (>= allocated)


def gpu_memory() -> dict[str, GpuMemory]:
    """Per CUDA device, when this process uses CUDA; empty otherwise. Never imports torch and
    never initialises CUDA: a process without a model (``--role adapters``) reports nothing."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        return {
            f"cuda:{index}": GpuMemory(
                allocated=int(torch.cuda.memory_allocated(index)),
                reserved=int(torch.cuda.memory_reserved(index)),
            )
            for index in range(torch.cuda.device_count())
        }
    except Exception:
        return {}
