"""GPU serving benchmark (issue 5): the seed's `generate` against our engine, in one run.

Builds a random-weight model with SOLAR-10.7B's exact shape (LlamaForCausalLM, 48 layers, hidden
4096, 32 heads / 8 KV heads, MLP 14336, vocab 32000, fp16) directly on the GPU (no download, no
tokenizer file: prompts are random token ids), then measures in the same process:

- seed: `model.generate`, eager, batch 1 (the tutorial's way), plus one static padded batch;
- hf-static (optional): `generate` with a static cache (transformers compiles it on first use);
- engines (``--engines``): ``static`` (ours: bot/generation/static/, CUDA graphs),
  ``static-compiled`` (the same with torch.compile) and ``cb`` (transformers' continuous batching
  manager, bot/generation/local.py), each with 1, 8 and 64 concurrent channels, every prompt
  64-512 tokens, 256 new tokens, EOS ignored, measured through the engine's streaming API;
- a correctness check: greedy engine output for a few prompts against `generate` (token for token
  in fp32; in fp16 any divergence must be a near-tie in the reference's logits);
- stress (optional): many channels with long prompts at once: all must complete (admission
  control queues them), none may fail.

Prints a table last and writes JSON (after every phase, so a timeout still leaves figures).
``--tiny`` runs the same code on a 2-layer model on the CPU in well under a minute; the suite runs it.

The engine streams text, not ids; the benchmark gives it a one-character-per-token tokenizer
(``CharTokenizer``), so streamed text maps back to token ids exactly (token counts, correctness).

    python bench/gpu.py                       # full size, needs one large GPU (H200: ~5 min)
    python bench/gpu.py --tiny --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import json
import logging
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.generation.engine import GenerationRequest, SamplingParams
from bot.generation.local import TransformersEngine
from bot.generation.options import LocalEngineOptions
from bot.generation.static import StaticCacheEngine

SOLAR_SHAPE: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "tie_word_embeddings": False,
}
TINY_SHAPE: dict[str, Any] = {
    **SOLAR_SHAPE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TARGETS = {"decode_1ch": 150.0, "aggregate_64ch": 3000.0, "ttft_p95_64ch": 1.5, "warmup_s": 90.0}
CHAR_BASE = 0x4E00  # token id i <-> chr(CHAR_BASE + i): 32000 ids stay clear of surrogates
GIB = 1024**3


class CharTokenizer:
    """One character per token id, so a text stream maps back to ids exactly."""

    bos_token_id = 1
    eos_token_id = 2

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(CHAR_BASE + int(i)) for i in ids)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = [ord(ch) - CHAR_BASE for ch in text]
        return [self.bos_token_id, *ids] if add_bos else ids

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        return "".join(message["content"] for message in messages)

    @staticmethod
    def ids(text: str) -> list[int]:
        return [ord(ch) - CHAR_BASE for ch in text]


# -- model and prompts ---------------------------------------------------------------------------


def build_model(tiny: bool, device: str) -> Any:
    """A random-weight Llama in SOLAR's shape, built directly on ``device`` (seconds, not minutes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.float32 if tiny else torch.float16
    config = LlamaConfig(**(TINY_SHAPE if tiny else SOLAR_SHAPE), attn_implementation="sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate and initialise in the final dtype, on the device
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # Like from_pretrained(dtype=...): weights in fp16, the rotary inv_freq buffer stays fp32.
    model.eval()
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return model


def make_prompts(
    count: int, low: int, high: int, *, seed: int, text_ids: list[int] | None
) -> list[list[int]]:
    """``count`` prompts of random lengths in [low, high], starting with BOS."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        length = rng.randint(low, high)
        if text_ids:  # real text in SOLAR's tokenizer, a different window per prompt
            start = (index * 37) % len(text_ids)
            body = [text_ids[(start + k) % len(text_ids)] for k in range(length - 1)]
        else:
            body = [rng.randrange(3, 32000) for _ in range(length - 1)]
        prompts.append([1, *body])
    return prompts


def solar_text_ids() -> list[int] | None:
    """Chat text in SOLAR's real tokenizer (mistral_common ships it), or None without it."""
    try:
        import shutil
        import tempfile

        import mistral_common
        from transformers import LlamaTokenizer

        from bot.generation.solar import render_solar_chat

        source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(source, Path(tmp) / "tokenizer.model")
            tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=False)
        messages = [
            {"role": "system", "content": "You are solarbot, a helpful assistant in a team chat."},
            {"role": "user", "content": "How do I reverse a list in Python? Show code, please."},
            {"role": "assistant", "content": "Use `items[::-1]` or `items.reverse()`.\n\n"},
            {"role": "user", "content": "And how do I sort a dict by value, newest first?"},
        ]
        text = render_solar_chat(messages, add_generation_prompt=True)
        return [int(i) for i in tokenizer(text, add_special_tokens=False).input_ids]
    except Exception:
        return None


# -- measurements --------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / GIB, 2)
    # CPU: the process's peak resident set (kilobytes on Linux).
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


def generate_kwargs(**kwargs: Any) -> dict[str, Any]:
    """Only the options this transformers version's ``generate`` path understands."""
    from transformers import GenerationConfig

    known = set(inspect.signature(GenerationConfig.__init__).parameters) | set(
        GenerationConfig().to_dict()
    )
    return {k: v for k, v in kwargs.items() if k in known or k in ("attention_mask",)}


class StepClock:
    """A ``generate`` streamer that only records when each step's tokens arrive (the first
    ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_generate(
    model: Any,
    prompts: list[list[int]],
    new_tokens: int,
    device: str,
    clock: StepClock | None = None,
    **extra: Any,
) -> tuple[float, Any]:
    """Left-padded batch ``generate`` of exactly ``new_tokens`` tokens (EOS ignored): seconds, output."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), 2, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    kwargs = generate_kwargs(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=2,
        eos_token_id=2,
        **extra,
    )
    if clock is not None:
        kwargs["streamer"] = clock
    ids, mask = ids.to(device), mask.to(device)
    sync(device)
    began = time.perf_counter()
    if clock is not None:
        clock.times.clear()
        clock.began = began  # type: ignore[attr-defined]
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, **kwargs)
    sync(device)
    return time.perf_counter() - began, out


def measure_generate(
    model: Any,
    prompts: list[list[int]],
    new_tokens: int,
    device: str,
    label: str,
    **extra: Any,
) -> dict[str, Any]:
    """One ``generate`` call, timed per step by a streamer: TTFT = prompt to first new token,
    decode tok/s = the remaining steps over their time."""
    reset_peak(device)
    clock = StepClock()
    total_s, _ = run_generate(model, prompts, new_tokens, device, clock=clock, **extra)
    steps = clock.times[1:]  # times[0]: the prompt is "streamed" first
    batch = len(prompts)
    began = clock.began  # type: ignore[attr-defined]
    first_s = steps[0] - began if steps else total_s
    decode_s = steps[-1] - steps[0] if len(steps) > 1 else float("nan")
    return {
        "name": label,
        "channels": batch,
        "new_tokens": new_tokens,
        "decode_tok_s": round((len(steps) - 1) / decode_s, 2) if len(steps) > 1 else None,
        "aggregate_tok_s": round(batch * new_tokens / total_s, 2),
        "ttft_p50_s": round(first_s, 4),
        "ttft_p95_s": round(first_s, 4),
        "wall_s": round(total_s, 3),
        "peak_mem_gib": peak_gib(device),
    }


@dataclass
class StreamTiming:
    submitted: float
    first: float | None = None
    finished: float | None = None
    ids: list[int] = field(default_factory=list)
    error: str | None = None


async def run_streams(
    engine: TransformersEngine,
    prompts: list[list[int]],
    new_tokens: int,
    *,
    tag: str,
    limit_s: float | None = None,
) -> list[StreamTiming]:
    """All prompts submitted at once, each consumed as its own stream."""
    greedy = SamplingParams(temperature=0.0)

    async def one(index: int, prompt: list[int]) -> StreamTiming:
        timing = StreamTiming(submitted=time.perf_counter())
        request = GenerationRequest(
            request_id=f"{tag}-{index}",
            prompt_ids=prompt,
            max_new_tokens=new_tokens,
            sampling=greedy,
        )
        try:
            async for delta in engine.stream(request):
                if delta and timing.first is None:
                    timing.first = time.perf_counter()
                timing.ids.extend(CharTokenizer.ids(delta))
        except Exception as exc:
            timing.error = f"{type(exc).__name__}: {exc}"
        timing.finished = time.perf_counter()
        return timing

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
    done, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return [
        task.result() if task in done else StreamTiming(submitted=0.0, error="timed out")
        for task in tasks
    ]


def summarize_streams(
    name: str, timings: list[StreamTiming], new_tokens: int, device: str
) -> dict[str, Any]:
    ok = [t for t in timings if t.error is None and t.first is not None and t.finished is not None]
    errors = [t.error for t in timings if t.error is not None]
    ttft = [t.first - t.submitted for t in ok if t.first is not None]
    decode = [
        (len(t.ids) - 1) / (t.finished - t.first)
        for t in ok
        if t.finished is not None and t.first is not None and len(t.ids) > 1
        if t.finished > t.first
    ]
    tokens = sum(len(t.ids) for t in ok)
    wall = (max(t.finished for t in ok) - min(t.submitted for t in ok)) if ok else float("nan")
    return {
        "name": name,
        "channels": len(timings),
        "new_tokens": new_tokens,
        "completed": len(ok),
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "short_streams": sum(1 for t in ok if len(t.ids) != new_tokens),
        "decode_tok_s": round(statistics.median(decode), 2) if decode else None,
        "aggregate_tok_s": round(tokens / wall, 2) if ok and wall > 0 else None,
        "ttft_p50_s": round(statistics.median(ttft), 4) if ttft else None,
        "ttft_p95_s": round(pct(ttft, 0.95), 4) if ttft else None,
        "wall_s": round(wall, 3),
        "peak_mem_gib": peak_gib(device),
    }


def reference_tokens(
    model: Any, prompts: list[list[int]], new_tokens: int, device: str
) -> list[tuple[list[int], list[list[float]]]]:
    """Greedy ``generate`` (batch 1) per prompt: the tokens and each step's raw logits."""
    import torch

    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=device)
        kwargs = generate_kwargs(
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=2,
            eos_token_id=2,
            return_dict_in_generate=True,
            output_logits=True,
        )
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        tokens = out.sequences[0, len(prompt) :].tolist()
        logits = [step[0].float().cpu().tolist() for step in out.logits]
        results.append((tokens, logits))
    return results


def compare(
    expected: list[tuple[list[int], list[list[float]]]], got: list[list[int]], exact: bool
) -> dict[str, Any]:
    """Token-for-token agreement. In fp16, a divergence is accepted only at a near-tie: the
    engine's token scores within ``tol`` of the reference's argmax at that step (after it the
    contexts differ, so nothing further is compared)."""
    rows = []
    passed = True
    for (ref, logits), ours in zip(expected, got, strict=True):
        same = 0
        while same < min(len(ref), len(ours)) and ref[same] == ours[same]:
            same += 1
        row: dict[str, Any] = {"tokens": len(ref), "matching_prefix": same}
        if same < len(ref):
            if same >= len(ours):
                row["problem"] = f"engine produced only {len(ours)} tokens"
                passed = False
            else:
                step = logits[same]
                top = max(step)
                gap = top - step[ours[same]]
                tol = max(0.05, 0.02 * abs(top))
                row["divergence_gap"] = round(gap, 5)
                row["tolerance"] = round(tol, 5)
                if exact or gap > tol:
                    passed = False
        rows.append(row)
    return {"passed": passed, "exact_required": exact, "prompts": rows}


# -- the run -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="2-layer model on CPU (the suite runs it)"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda if available (cpu for --tiny)"
    )
    parser.add_argument(
        "--only", default="seed,engine", help="phases: seed,hf-static,engine,stress (comma list)"
    )
    parser.add_argument(
        "--engines",
        default="static,cb",
        help="static, static-compiled (ours), cb (transformers' manager)",
    )
    parser.add_argument("--channels", default="1,8,64", help="engine channel counts")
    parser.add_argument("--context-window", type=int, default=4096, help="per-request KV length")
    parser.add_argument("--prefill-tokens", type=int, default=8192, help="static: per prefill")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256 (16 with --tiny)")
    parser.add_argument("--prompt-min", type=int, default=None, help="default 64 (16 with --tiny)")
    parser.add_argument("--prompt-max", type=int, default=None, help="default 512 (64 with --tiny)")
    parser.add_argument("--seed-batch", type=int, default=None, help="static batch (32; 4 tiny)")
    parser.add_argument("--check-prompts", type=int, default=3)
    parser.add_argument("--check-tokens", type=int, default=None, help="default 8 (12 tiny)")
    parser.add_argument("--warm-round", type=int, default=8, help="tokens per unmeasured round")
    parser.add_argument("--stress", type=int, default=256, help="channels in the stress phase")
    parser.add_argument("--stress-min", type=int, default=None, help="default 1024 (64 tiny)")
    parser.add_argument("--stress-max", type=int, default=None, help="default 3584 (256 tiny)")
    parser.add_argument("--stress-tokens", type=int, default=8)
    parser.add_argument("--stress-timeout", type=float, default=150.0)
    parser.add_argument(
        "--phase-timeout", type=float, default=180.0, help="s per engine phase (then: timed out)"
    )
    parser.add_argument(
        "--cuda-graphs", choices=("auto", "on", "off"), default="on", help="engine CUDA graphs"
    )
    parser.add_argument("--compile-level", type=int, default=None, help="engine: 0-3")
    parser.add_argument("--async-batching", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--cache-blocks", type=int, default=None, help="engine KV cache blocks")
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--kv-memory-fraction", type=float, default=None)
    parser.add_argument("--max-active", type=int, default=None, help="admission limit")
    parser.add_argument("--json", default=None, help="write results here (JSON)")
    return parser.parse_args(argv)


def tri(value: str) -> bool | None:
    return {"auto": None, "on": True, "off": False}[value]


class Report:
    def __init__(self, path: str | None, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "meta": meta,
            "phases": [],
            "engines": {},
            "check": {},
            "errors": [],
        }

    def add(self, row: dict[str, Any]) -> None:
        self.data["phases"].append(row)
        self.save()

    def error(self, phase: str, exc: BaseException) -> None:
        text = f"{phase}: {type(exc).__name__}: {exc}"
        print(f"!! {text}", flush=True)
        traceback.print_exc()
        self.data["errors"].append(text)
        self.save()

    def save(self) -> None:
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def environment(device: str, tiny: bool) -> dict[str, Any]:
    import torch
    import transformers

    meta: dict[str, Any] = {
        "mode": "tiny-cpu" if tiny else "solar-shape",
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(0)
        _free, total = torch.cuda.mem_get_info()
        meta["gpu_mem_total_gib"] = round(total / GIB, 1)
    else:
        meta["cpu_threads"] = torch.get_num_threads()
    return meta


ENGINES = ("static", "static-compiled", "cb")


def make_engine(kind: str, args: argparse.Namespace, model: Any, slots: int) -> Any:
    """``static``: our decode loop (bot/generation/static/); ``static-compiled``: the same with
    torch.compile on the decode step's layer parts; ``cb``: transformers' continuous batching
    manager (bot/generation/local.py)."""
    common: dict[str, Any] = {
        "context_window": args.context_window,
        "ignore_eos": True,
        "stop_strings": (),
        "kv_memory_fraction": args.kv_memory_fraction,
        "max_active_requests": args.max_active or slots,
        "cuda_graphs": tri(args.cuda_graphs),
    }
    if kind in ("static", "static-compiled"):
        return StaticCacheEngine.from_loaded(
            model,
            CharTokenizer(),
            model_id="random-solar-shape",
            options=LocalEngineOptions(
                prefill_tokens=args.prefill_tokens,
                compile_decode=kind == "static-compiled",
                **common,
            ),
        )
    return TransformersEngine.from_loaded(
        model,
        CharTokenizer(),
        model_id="random-solar-shape",
        options=LocalEngineOptions(
            compile_level=args.compile_level,
            async_batching=tri(args.async_batching),
            cache_blocks=args.cache_blocks,
            max_batch_tokens=args.max_batch_tokens,
            **common,
        ),
    )


async def bench_engine(
    kind: str,
    args: argparse.Namespace,
    model: Any,
    device: str,
    report: Report,
    prompts: list[list[int]],
    check: list[tuple[list[int], list[list[float]]]] | None,
    check_prompts: list[list[int]],
    stress_prompts: list[list[int]] | None,
) -> None:
    channels = [int(c) for c in args.channels.split(",") if c.strip()]
    engine = make_engine(
        kind, args, model, max([*channels, len(stress_prompts) if stress_prompts else 1])
    )
    reset_peak(device)
    began = time.perf_counter()
    await engine.start()
    warmup = time.perf_counter() - began
    report.data["engines"][kind] = {
        "warmup_s": round(warmup, 2),
        "cache_tokens": engine.cache_tokens,
        "slots": getattr(engine, "slots", None),
        "cuda_graphs": getattr(engine, "graph_count", None),
        "graph_error": getattr(engine, "graph_error", None),
        "compiled": getattr(engine, "compiled", None),
        "compile_error": getattr(engine, "compile_error", None),
        "peak_mem_after_warmup_gib": peak_gib(device),
    }
    report.save()
    print(f"{kind}: warm-up {warmup:.1f} s, KV cache {engine.cache_tokens} tokens", flush=True)
    try:
        gauges = gauge_check(engine, device)
        report.data["engines"][kind]["gpu_memory_gauges"] = gauges
        verdict = "PASS" if gauges["passed"] else "FAIL"
        print(f"{kind}: GPU memory gauges vs torch: {verdict} {gauges['scraped']}", flush=True)
        if not gauges["passed"]:
            report.data["errors"].append(f"{kind}: GPU memory gauges: {gauges}")
        report.save()
    except Exception as exc:
        report.error(f"{kind} gauges", exc)
    try:
        if check is not None:
            try:
                timings = await run_streams(
                    engine, check_prompts, args.check_tokens, tag="check", limit_s=300
                )
                got = [t.ids for t in timings]
                result = compare(check, got, exact=args.tiny)
                result["errors"] = [t.error for t in timings if t.error]
                if result["errors"]:
                    result["passed"] = False
                report.data["check"][kind] = result
                report.save()
                verdict = "PASS" if result["passed"] else "FAIL"
                print(f"{kind}: correctness vs generate: {verdict}", flush=True)
            except Exception as exc:
                report.error(f"{kind} check", exc)
        for count in channels:
            try:
                batch = [prompts[i % len(prompts)] for i in range(count)]
                limit = args.phase_timeout
                if args.warm_round > 0:
                    await run_streams(
                        engine, batch, args.warm_round, tag=f"warm{count}", limit_s=limit
                    )
                reset_peak(device)
                timings = await run_streams(
                    engine, batch, args.new_tokens, tag=f"ch{count}", limit_s=limit
                )
                row = summarize_streams(f"{kind} {count}ch", timings, args.new_tokens, device)
                report.add(row)
                print(json.dumps(row), flush=True)
            except Exception as exc:
                report.error(f"{kind} {count}ch", exc)
        if stress_prompts is not None:
            try:
                reset_peak(device)
                most_queued = 0

                async def watch() -> None:
                    nonlocal most_queued
                    while True:
                        most_queued = max(most_queued, engine.queued_requests)
                        await asyncio.sleep(0.05)

                watcher = asyncio.create_task(watch())
                try:
                    timings = await run_streams(
                        engine,
                        stress_prompts,
                        args.stress_tokens,
                        tag="stress",
                        limit_s=args.stress_timeout,
                    )
                finally:
                    watcher.cancel()
                row = summarize_streams(
                    f"{kind} stress {len(stress_prompts)}ch", timings, args.stress_tokens, device
                )
                row["prompt_tokens"] = sum(len(p) for p in stress_prompts)
                row["most_queued"] = max(most_queued, engine.peak_queued_requests)
                row["health_ready_after"] = engine.health().ready
                report.add(row)
                print(json.dumps(row), flush=True)
            except Exception as exc:
                report.error(f"{kind} stress", exc)
    finally:
        await engine.close()


def gauge_check(engine: Any, device: str) -> dict[str, Any]:
    """The GPU memory gauges as Prometheus scrapes them (bot/metrics.py) against torch's own
    figures, with the engine idle; on a CPU there must be none. Where prometheus_client is not
    installed (the bare GPU box; ``make gpu-deps`` brings it), ``bot.gpu_memory``, which the
    gauges read, is checked alone and ``scrape`` says so."""
    import torch

    from bot.gpu_memory import gpu_memory

    sync(device)
    read = {
        name: {
            "solarbot_gpu_memory_bytes": float(use.allocated),
            "solarbot_gpu_memory_reserved_bytes": float(use.reserved),
        }
        for name, use in gpu_memory().items()
    }
    scrape = "done"
    scraped: dict[str, dict[str, float]] = {}
    try:
        from prometheus_client.parser import text_string_to_metric_families

        from bot.metrics import Metrics
    except ImportError as exc:
        scrape = f"skipped ({exc})"
    else:
        metrics = Metrics(process_metrics=False)
        metrics.watch(engine=engine)
        for family in text_string_to_metric_families(metrics.render().decode()):
            if family.name.startswith("solarbot_gpu_memory"):
                for sample in family.samples:
                    label = sample.labels["device"]
                    scraped.setdefault(label, {})[family.name] = sample.value
    if not device.startswith("cuda"):
        passed = not read and not scraped
        return {
            "passed": passed,
            "scrape": scrape,
            "scraped": scraped,
            "expected": "none (no CUDA)",
        }
    index = torch.device(device).index or 0
    label = f"cuda:{index}"
    expected = {
        "solarbot_gpu_memory_bytes": float(torch.cuda.memory_allocated(index)),
        "solarbot_gpu_memory_reserved_bytes": float(torch.cuda.memory_reserved(index)),
    }
    passed = read.get(label) == expected and expected["solarbot_gpu_memory_bytes"] > 0
    if scrape == "done":
        passed = passed and scraped.get(label) == expected
    return {
        "passed": passed,
        "device": label,
        "scrape": scrape,
        "scraped": scraped.get(label),
        "read": read.get(label),
        "expected": expected,
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(report: Report) -> str:
    data = report.data
    phases = data["phases"]
    seed1 = next((p for p in phases if p["name"] == "seed generate b1"), None)
    seedb = next(
        (p for p in phases if p["name"].startswith("seed generate b") and p is not seed1), None
    )
    lines = []
    head = (
        f"{'path':<26}{'ch':>5}{'decode tok/s/ch':>17}{'aggregate tok/s':>17}"
        f"{'TTFT p50 s':>12}{'TTFT p95 s':>12}{'peak GiB':>10}{'agg/seed b1':>13}"
        f"{'agg/seed bN':>13}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for row in phases:
        agg = row.get("aggregate_tok_s")
        r1 = agg / seed1["aggregate_tok_s"] if agg and seed1 else None
        rb = agg / seedb["aggregate_tok_s"] if agg and seedb else None
        name = row["name"] + (f" ({row['failed']} failed)" if row.get("failed") else "")
        lines.append(
            f"{name:<26}{row['channels']:>5}{fmt(row.get('decode_tok_s')):>17}"
            f"{fmt(agg):>17}{fmt(row.get('ttft_p50_s'), 3):>12}{fmt(row.get('ttft_p95_s'), 3):>12}"
            f"{fmt(row.get('peak_mem_gib'), 2):>10}{fmt(r1, 2):>13}{fmt(rb, 2):>13}"
        )
    for kind, engine in data["engines"].items():
        one = next((p for p in phases if p["name"] == f"{kind} 1ch"), None)
        many = next((p for p in phases if p["name"] == f"{kind} 64ch"), None)
        check = data["check"].get(kind)
        verdict = "not run" if check is None else ("PASS" if check["passed"] else "FAIL")
        ratio = (
            f"{one['decode_tok_s'] / seed1['decode_tok_s']:.2f}x"
            if one and seed1 and one.get("decode_tok_s") and seed1.get("decode_tok_s")
            else "-"
        )
        lines.append(
            f"{kind}: 1-channel decode ours/seed {ratio}; correctness vs generate: {verdict}; "
            f"warm-up {engine.get('warmup_s')} s; KV cache {engine.get('cache_tokens')} tokens"
        )
        if data["meta"]["mode"] == "tiny-cpu":
            continue
        verdicts = [
            ("1ch decode >= 150", one and one.get("decode_tok_s"), TARGETS["decode_1ch"], 1),
            ("64ch aggregate >= 3000", many and many.get("aggregate_tok_s"), 3000.0, 1),
            ("64ch TTFT p95 <= 1.5 s", many and many.get("ttft_p95_s"), 1.5, -1),
            ("warm-up <= 90 s", engine.get("warmup_s"), 90.0, -1),
        ]
        parts = []
        for label, value, bound, sign in verdicts:
            if not value:
                parts.append(f"{label}: not measured")
            else:
                good = value >= bound if sign > 0 else value <= bound
                parts.append(f"{label}: {'PASS' if good else 'FAIL'} ({value})")
        lines.append(f"{kind} targets: " + "; ".join(parts))
    if data["meta"]["mode"] == "tiny-cpu":
        lines.append("targets: n/a (tiny CPU run: figures are not comparable with the GPU)")
    if data["errors"]:
        lines.append(f"errors: {len(data['errors'])} (see above / JSON)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    tiny = args.tiny
    logging.basicConfig(
        level=logging.WARNING if tiny else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    device = args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda:0")
    if not tiny and not device.startswith("cuda"):
        print("the full-size run needs a GPU (use --tiny on a CPU)", file=sys.stderr)
        return 2
    if tiny:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    defaults = {
        "new_tokens": (16, 256),
        "prompt_min": (16, 64),
        "prompt_max": (64, 512),
        "seed_batch": (4, 32),
        "check_tokens": (12, 8),
        "stress_min": (64, 1024),
        "stress_max": (256, 3584),
    }
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if tiny and args.cache_blocks is None:
        args.cache_blocks = 128
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = only - {"seed", "hf-static", "engine", "stress"}
    if unknown:
        print(f"--only: unknown phases {sorted(unknown)}", file=sys.stderr)
        return 2
    engines = [part.strip() for part in args.engines.split(",") if part.strip()]
    if not engines or set(engines) - set(ENGINES):
        print(f"--engines: choose from {', '.join(ENGINES)}", file=sys.stderr)
        return 2

    report = Report(args.json, environment(device, tiny))
    report.data["meta"]["args"] = vars(args)
    run_began = time.perf_counter()
    model = build_model(tiny, device)
    sync(device)
    build_s = time.perf_counter() - run_began
    params = sum(p.numel() for p in model.parameters())
    report.data["meta"]["model_build_s"] = round(build_s, 2)
    report.data["meta"]["params"] = params
    print(f"built {params / 1e9:.2f} B params on {device} in {build_s:.1f} s", flush=True)

    text_ids = solar_text_ids() if tiny else None
    report.data["meta"]["prompt_source"] = "solar-tokenizer text" if text_ids else "random ids"
    prompts = make_prompts(64, args.prompt_min, args.prompt_max, seed=1, text_ids=text_ids)
    check_prompts = prompts[: args.check_prompts]
    check = None

    try:
        if "seed" in only:
            try:
                run_generate(
                    model, [prompts[0][:16]], 2, device
                )  # CUDA/cuBLAS start-up, not measured
                middle = sorted(prompts, key=len)[len(prompts) // 2]
                row = measure_generate(model, [middle], args.new_tokens, device, "seed generate b1")
                report.add(row)
                print(json.dumps(row), flush=True)
                if args.seed_batch > 1:
                    batch = prompts[: args.seed_batch]
                    label = f"seed generate b{len(batch)}"
                    row = measure_generate(model, batch, args.new_tokens, device, label)
                    report.add(row)
                    print(json.dumps(row), flush=True)
            except Exception as exc:
                report.error("seed", exc)
        if "hf-static" in only:
            try:
                middle = sorted(prompts, key=len)[len(prompts) // 2]
                began = time.perf_counter()
                run_generate(model, [middle], 4, device, cache_implementation="static")
                compile_s = time.perf_counter() - began
                row = measure_generate(
                    model,
                    [middle],
                    args.new_tokens,
                    device,
                    "hf static cache b1",
                    cache_implementation="static",
                )
                row["first_call_s"] = round(compile_s, 2)
                report.add(row)
                print(json.dumps(row), flush=True)
            except Exception as exc:
                report.error("hf-static", exc)
        if "engine" in only or "stress" in only:
            if "engine" in only:
                try:  # before the engine: it switches the model to paged attention
                    check = reference_tokens(model, check_prompts, args.check_tokens, device)
                except Exception as exc:
                    report.error("reference", exc)
            else:
                args.channels = ""
            stress_prompts = None
            if "stress" in only:
                stress_prompts = make_prompts(
                    args.stress, args.stress_min, args.stress_max, seed=2, text_ids=None
                )
            for index, kind in enumerate(engines):
                try:
                    asyncio.run(
                        bench_engine(
                            kind,
                            args,
                            model,
                            device,
                            report,
                            prompts,
                            check,
                            check_prompts,
                            stress_prompts if index == 0 else None,
                        )
                    )
                except Exception as exc:
                    report.error(kind, exc)
                gc.collect()  # the engine and its KV cache are gone: give the memory back
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()

    except KeyboardInterrupt:  # the session's timeout: keep what was measured, print the table
        report.data["errors"].append("interrupted (timeout)")
    report.data["meta"]["total_s"] = round(time.perf_counter() - run_began, 1)
    report.save()
    print()
    print(table(report))
    failed_check = any(not c["passed"] for c in report.data["check"].values())
    return 1 if report.data["errors"] or failed_check else 0


if __name__ == "__main__":
    sys.exit(main())
