"""Depth up-scaling (DUS), the recipe that made SOLAR-10.7B out of Mistral-7B.

Take a decoder with ``n`` layers, make two copies, drop the last ``m`` layers of the first copy and
the first ``m`` layers of the second, and stack them: ``s = 2 * (n - m)`` layers. Output layers
``0 .. n-m-1`` are base layers ``0 .. n-m-1``; output layers ``n-m .. s-1`` are base layers
``m .. n-1``. For Mistral-7B (n=32, m=8) that is 48 layers.

``upscale()`` streams the base's safetensors tensor by tensor: each tensor is read with
``safetensors.safe_open``, cast to the requested dtype and written straight into its output shard
(whose header is planned up front), then freed. Peak memory is about one tensor (plus its cast copy),
never the model or even a whole shard. Everything is written into a sibling ``OUT.partial-XXXX``
folder that is renamed to ``OUT`` only after it is complete, and removed on any failure.

The up-scaled model is *not* continued-pretrained; see ``docs/upscale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import struct
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open as _untyped_safe_open

from bot.errors import UpscaleError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# --dtype names -> safetensors dtype codes. torch is imported only where tensors are read or
# written, so the CLI (which builds this command's parser) starts without it.
DTYPES: dict[str, str] = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
UNKNOWN_LICENCE = "unknown — check the base model's licence"
INDEX_FILE = "model.safetensors.index.json"
# What we fetch from the hub: the safetensors weights (not Mistral's consolidated.* copies),
# config/tokenizer/generation files, and the model card and licence.
HUB_ALLOW_PATTERNS = [
    "model*.safetensors",
    "*.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
    "README.md",
    "LICENSE*",
    "NOTICE*",
]
EMBED_KEY = "model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# Weight files of the base that must not be copied next to the new weights.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".ot",
    ".npz",
)
_REWRITTEN = {"config.json", "README.md", INDEX_FILE, "pytorch_model.bin.index.json"}
# Top-level config lists of length n that are not per-layer.
_NOT_PER_LAYER = {
    "architectures",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
}
# safetensors dtype code -> (bytes per element, torch dtype name)
_ST_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (8, "float64"),
    "F32": (4, "float32"),
    "F16": (2, "float16"),
    "BF16": (2, "bfloat16"),
    "I64": (8, "int64"),
    "I32": (4, "int32"),
    "I16": (2, "int16"),
    "I8": (1, "int8"),
    "U8": (1, "uint8"),
    "BOOL": (1, "bool"),
    "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"),
}
_CASTABLE = {"F64", "F32", "F16", "BF16"}
_COMPARE_CHUNK_BYTES = 64 * 1024**2

# safetensors ships untyped stubs for safe_open; one typed seam keeps mypy strict elsewhere.
_safe_open: Any = _untyped_safe_open


@dataclass(frozen=True)
class UpscaleReport:
    base: str
    out: Path
    n: int
    m: int
    s: int
    layer_map: tuple[int, ...]
    bytes_written: int
    shards: tuple[str, ...]


@dataclass(frozen=True)
class _Tensor:
    """One tensor of the base: where it lives and what it is."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Item:
    """One tensor of the output: its name, its source and its (cast) layout."""

    name: str
    src: _Tensor
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class _Plan:
    base: str
    base_dir: Path
    n: int
    m: int
    layer_map: tuple[int, ...]
    config: dict[str, Any]
    shards: tuple[tuple[_Item, ...], ...]
    files_to_copy: tuple[Path, ...]
    licence: dict[str, str]
    is_hub_id: bool
    estimated_bytes: int


def layer_map(n: int, m: int) -> list[int]:
    """Base layer for each output layer: ``[0 .. n-m-1] + [m .. n-1]`` (length ``2 * (n - m)``)."""
    if n < 1:
        raise UpscaleError(f"the base must have at least one layer, got n={n}")
    if not 0 <= m < n:
        raise UpscaleError(
            f"--drop must be between 0 and {n - 1} for a base with {n} layers, got {m}"
        )
    return list(range(0, n - m)) + list(range(m, n))


def upscale(
    *,
    base: str,
    out: Path,
    drop: int | None = None,
    dtype: str | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
) -> UpscaleReport:
    """Depth up-scale ``base`` (local folder or hub id) into the new folder ``out``.

    ``drop`` defaults to ``n // 4``; ``dtype`` (float16, bfloat16, float32) defaults to the base's.
    Raises ``UpscaleError`` on bad input; on any failure nothing is left at ``out`` (an existing
    ``out`` replaced with ``force`` is only replaced after success).
    """
    out = Path(out).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise UpscaleError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_shard_bytes <= 0:
        raise UpscaleError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    if out.exists() and not force:
        raise UpscaleError(f"{out} already exists; pass --force to replace it")

    base_dir, is_hub_id = _resolve_base(base)
    _check_out_vs_base(out, base_dir, force)
    plan = _plan(base, base_dir, is_hub_id, drop, dtype, max_shard_bytes)
    _check_disk(out, plan.estimated_bytes)

    created = _missing_ancestors(out.parent)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
        shard_names = _write(plan, tmp, out.name, progress)
        bytes_written = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        _replace(tmp, out)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:
            try:
                directory.rmdir()
            except OSError:
                break
        if isinstance(exc, UpscaleError) or not isinstance(exc, Exception):
            raise
        raise UpscaleError(f"writing {out} failed: {_one_line(exc)}") from exc
    return UpscaleReport(
        base=base,
        out=out,
        n=plan.n,
        m=plan.m,
        s=len(plan.layer_map),
        layer_map=plan.layer_map,
        bytes_written=bytes_written,
        shards=shard_names,
    )


# --- the base -----------------------------------------------------------------------------------


def _resolve_base(base: str) -> tuple[Path, bool]:
    """The local folder holding the base, downloading it first when ``base`` is a hub id."""
    path = Path(base).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UpscaleError(f"--base {base}: not a folder (give the model's folder or hub id)")
        return path, False
    looks_like_path = base.startswith((".", "/", "~")) or base.count("/") > 1 or "\\" in base
    if looks_like_path or not _HUB_ID.match(base):
        raise UpscaleError(f"--base {base}: no such folder, and not a Hugging Face Hub id")
    return _download(base), True


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS))
    except Exception as exc:
        raise UpscaleError(
            f"--base {repo_id}: not a local folder, and downloading it from the Hugging Face Hub "
            f"failed ({type(exc).__name__}: {_one_line(exc)}); check the id and your network, "
            "or download it first and pass the folder"
        ) from exc


def _plan(
    base: str,
    base_dir: Path,
    is_hub_id: bool,
    drop: int | None,
    dtype: str | None,
    max_shard_bytes: int,
) -> _Plan:
    config = _read_config(base_dir)
    n = config.get("num_hidden_layers")
    if isinstance(n, bool) or not isinstance(n, int) or config.get("is_encoder_decoder"):
        raise UpscaleError(
            f"{base}: not a decoder-only model (config.json has no integer num_hidden_layers "
            "or is an encoder-decoder)"
        )
    m = n // 4 if drop is None else drop
    lmap = layer_map(n, m)

    tensors = _read_tensors(base, base_dir)
    layers: dict[int, list[_Tensor]] = {}
    others: list[_Tensor] = []
    for name in sorted(tensors):
        match = _LAYER_KEY.match(name)
        if match:
            layers.setdefault(int(match.group(1)), []).append(tensors[name])
        else:
            others.append(tensors[name])
    if not layers or EMBED_KEY not in tensors:
        raise UpscaleError(
            f"{base}: not a decoder with numbered model.layers.N. weights and "
            f"{EMBED_KEY} (cannot up-scale this architecture)"
        )
    if sorted(layers) != list(range(n)):
        found = f"{min(layers)}..{max(layers)} ({len(layers)} layers)"
        raise UpscaleError(
            f"{base}: config.json says num_hidden_layers={n} but the weights have layers {found}"
        )
    if _check_tied_embeddings(base, config, tensors):
        others = [t for t in others if t.name != LM_HEAD_KEY]

    items: list[_Item] = [_item(tensors[EMBED_KEY], EMBED_KEY, dtype)]
    for out_layer, base_layer in enumerate(lmap):
        for src in layers[base_layer]:
            suffix = src.name[len(f"model.layers.{base_layer}.") :]
            items.append(_item(src, f"model.layers.{out_layer}.{suffix}", dtype))
    items += [_item(src, src.name, dtype) for src in others if src.name != EMBED_KEY]

    shards = _split(items, max_shard_bytes)
    files_to_copy = tuple(
        p
        for p in sorted(base_dir.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name not in _REWRITTEN
        and not p.name.endswith(_WEIGHT_SUFFIXES)
    )
    # Tensor bytes, one header per shard (generous), copied files, small json/markdown files.
    estimated = (
        sum(item.nbytes for item in items)
        + sum(64 * 1024 + 256 * len(shard) for shard in shards)
        + sum(p.stat().st_size for p in files_to_copy)
        + 1024 * 1024
    )
    return _Plan(
        base=base,
        base_dir=base_dir,
        n=n,
        m=m,
        layer_map=tuple(lmap),
        config=_new_config(config, n, lmap, dtype),
        shards=shards,
        files_to_copy=files_to_copy,
        licence=_read_licence(base_dir),
        is_hub_id=is_hub_id,
        estimated_bytes=estimated,
    )


def _read_config(base_dir: Path) -> dict[str, Any]:
    path = base_dir / "config.json"
    if not path.is_file():
        raise UpscaleError(f"{base_dir}: no config.json (is this a transformers model folder?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UpscaleError(f"{path}: cannot read it ({_one_line(exc)})") from exc
    if not isinstance(config, dict):
        raise UpscaleError(f"{path}: not a JSON object")
    return config


def _read_tensors(base: str, base_dir: Path) -> dict[str, _Tensor]:
    """Name -> location/dtype/shape of every base tensor, from the safetensors headers only."""
    index = base_dir / INDEX_FILE
    single = base_dir / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({base_dir / str(f) for f in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UpscaleError(f"{index}: not a valid safetensors index ({exc!r})") from exc
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UpscaleError(f"{base}: {INDEX_FILE} lists missing shards: {', '.join(missing)}")
    elif single.is_file():
        files = [single]
    else:
        has_bin = any(base_dir.glob("*.bin")) or any(base_dir.glob("*.pt*"))
        hint = (
            " (it has only PyTorch .bin/.pt weights: convert them first, e.g. load with "
            "transformers and save_pretrained(), which writes safetensors)"
            if has_bin
            else ""
        )
        raise UpscaleError(
            f"{base}: no safetensors weights (model.safetensors or {INDEX_FILE}){hint}"
        )

    tensors: dict[str, _Tensor] = {}
    for file in files:
        try:
            with _safe_open(str(file), framework="pt") as handle:
                names: list[str] = list(handle.keys())
                for name in names:
                    piece = handle.get_slice(name)
                    tensor = _Tensor(file, name, str(piece.get_dtype()), tuple(piece.get_shape()))
                    if name in tensors:
                        raise UpscaleError(f"{base}: tensor {name} is in two shards")
                    if tensor.dtype not in _ST_DTYPES:
                        raise UpscaleError(f"{file}: {name} has unsupported dtype {tensor.dtype}")
                    tensors[name] = tensor
        except UpscaleError:
            raise
        except Exception as exc:
            raise UpscaleError(
                f"{file}: not a readable safetensors file ({_one_line(exc)})"
            ) from exc
    return tensors


def _check_tied_embeddings(base: str, config: dict[str, Any], tensors: dict[str, _Tensor]) -> bool:
    """Validate tie_word_embeddings against the weights; True if lm_head is a redundant copy."""
    tied = config.get("tie_word_embeddings")
    if not isinstance(tied, bool):
        tied = _default_tie(config.get("model_type"))
    has_head = LM_HEAD_KEY in tensors
    if not tied and not has_head:
        raise UpscaleError(
            f"{base}: config.json says tie_word_embeddings=false but the weights have no "
            f"{LM_HEAD_KEY}; fix the config or the checkpoint"
        )
    if tied and has_head:
        if not _same_tensor(tensors[LM_HEAD_KEY], tensors[EMBED_KEY]):
            raise UpscaleError(
                f"{base}: config.json says tie_word_embeddings=true but {LM_HEAD_KEY} differs "
                f"from {EMBED_KEY}; set tie_word_embeddings to false or fix the checkpoint"
            )
        return True  # an identical copy; transformers re-ties it on load
    return False


def _default_tie(model_type: object) -> bool:
    """The architecture's default when config.json omits tie_word_embeddings."""
    try:
        from transformers import AutoConfig

        return bool(AutoConfig.for_model(str(model_type)).tie_word_embeddings)
    except Exception:
        return True  # PretrainedConfig's default


def _same_tensor(a: _Tensor, b: _Tensor) -> bool:
    """Exact equality, compared in row chunks so memory stays bounded."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.shape:
        return bool(torch.equal(_load(a), _load(b)))
    row_bytes = _nbytes(a.dtype, a.shape[1:])
    step = max(1, _COMPARE_CHUNK_BYTES // max(1, row_bytes))
    with (
        _safe_open(str(a.file), framework="pt") as fa,
        _safe_open(str(b.file), framework="pt") as fb,
    ):
        sa, sb = fa.get_slice(a.name), fb.get_slice(b.name)
        for start in range(0, a.shape[0], step):
            if not torch.equal(sa[start : start + step], sb[start : start + step]):
                return False
    return True


def _read_licence(base_dir: Path) -> dict[str, str]:
    """license / license_name / license_link from the base README.md's YAML front matter."""
    readme = base_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found: dict[str, str] = {}
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            break
        match = re.match(r"^(license|license_name|license_link):\s*(.*?)\s*$", line)
        if not match:
            continue
        value = match.group(2).strip("'\"")
        if not value and i + 1 < len(lines):  # a one-item YAML list on the next line
            value = lines[i + 1].strip().removeprefix("-").strip().strip("'\"")
        if value:
            found[match.group(1)] = value
    return found


# --- the output ---------------------------------------------------------------------------------


def _item(src: _Tensor, name: str, dtype: str | None) -> _Item:
    out_dtype = src.dtype
    if dtype is not None and src.dtype in _CASTABLE:
        out_dtype = DTYPES[dtype]
    return _Item(name=name, src=src, dtype=out_dtype, nbytes=_nbytes(out_dtype, src.shape))


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count * _ST_DTYPES[dtype][0]


def _split(items: list[_Item], max_shard_bytes: int) -> tuple[tuple[_Item, ...], ...]:
    """Greedy shards of at most max_shard_bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[_Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    # Largest element size first keeps every tensor aligned within the data buffer.
    return tuple(tuple(sorted(shard, key=lambda it: -_ST_DTYPES[it.dtype][0])) for shard in shards)


def _new_config(
    config: dict[str, Any], n: int, lmap: list[int], dtype: str | None
) -> dict[str, Any]:
    new = dict(config)
    s = len(lmap)
    new["num_hidden_layers"] = s
    for key, value in config.items():
        if isinstance(value, list) and len(value) == n and key not in _NOT_PER_LAYER:
            new[key] = [value[b] for b in lmap]
    window = config.get("max_window_layers")
    if isinstance(window, int) and not isinstance(window, bool):
        # Layers below max_window_layers use full attention; keep each layer's kind.
        full = [b < window for b in lmap]
        leading = next((i for i, f in enumerate(full) if not f), s)
        if any(full[leading:]) and config.get("use_sliding_window") and "layer_types" not in config:
            raise UpscaleError(
                f"max_window_layers={window} cannot describe the up-scaled layer order; add an "
                "explicit layer_types list to the base's config.json"
            )
        new["max_window_layers"] = leading
    if dtype is not None:
        new["dtype"] = dtype
        if "torch_dtype" in new:
            new["torch_dtype"] = dtype
    return new


def _write(plan: _Plan, folder: Path, title: str, progress: bool) -> tuple[str, ...]:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    count = len(plan.shards)
    names = tuple(f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1))
    total = sum(item.nbytes for shard in plan.shards for item in shard)
    weight_map: dict[str, str] = {}
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="upscale",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for name, shard in zip(names, plan.shards, strict=True):
            bar.set_postfix_str(name, refresh=False)
            for written in _write_shard(folder / name, shard):
                bar.update(written)
            weight_map.update({item.name: name for item in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_text(folder / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    _write_text(folder / "config.json", json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    for src in plan.files_to_copy:
        shutil.copy2(src, folder / src.name)
    _write_text(folder / "README.md", _model_card(plan, title))
    return names


def _write_shard(path: Path, shard: tuple[_Item, ...]) -> Iterator[int]:
    """Write one safetensors file tensor by tensor; yields the bytes written after each tensor."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in shard:
        header[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.src.shape),
            "data_offsets": [offset, offset + item.nbytes],
        }
        offset += item.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data buffer starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for item in shard:
            tensor = _load(item.src)
            target = getattr(torch, _ST_DTYPES[item.dtype][1])
            if tensor.dtype != target:
                tensor = tensor.to(target)
            if tuple(tensor.shape) != item.src.shape:
                raise UpscaleError(f"{item.src.file}: {item.src.name} has an unexpected shape")
            data = tensor.contiguous().reshape(-1).view(torch.uint8)
            if data.numel() != item.nbytes:
                raise UpscaleError(f"{item.src.file}: {item.src.name} has an unexpected size")
            fh.write(data.numpy().data)
            del tensor, data
            yield item.nbytes
        fh.flush()
        os.fsync(fh.fileno())


def _load(src: _Tensor) -> torch.Tensor:
    # Opened per tensor so no memory-mapped pages of the base stay resident between tensors.
    with _safe_open(str(src.file), framework="pt") as handle:
        tensor: torch.Tensor = handle.get_tensor(src.name)
    return tensor


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _model_card(plan: _Plan, title: str) -> str:
    s = len(plan.layer_map)
    licence = plan.licence.get("license")
    front = ["---"]
    front += [f"{key}: {value}" for key, value in plan.licence.items()]
    if plan.is_hub_id:
        front.append(f"base_model: {plan.base}")
    front += ["tags:", "- depth-up-scaling", "- solarbot", "---", ""]
    licence_text = licence if licence else UNKNOWN_LICENCE
    if licence and (name := plan.licence.get("license_name")):
        licence_text = f"{licence} ({name})"
    half = plan.n - plan.m
    body = [
        f"# {title}",
        "",
        f"A depth up-scaled (DUS) version of `{plan.base}`, made with `solarbot upscale "
        f"--drop {plan.m}`: two copies of the {plan.n}-layer base, the last {plan.m} layers "
        f"dropped from the first and the first {plan.m} from the second, stacked into "
        f"{s} layers (output 0–{half - 1} = base 0–{half - 1}, "
        f"output {half}–{s - 1} = base {plan.m}–{plan.n - 1}).",
        "",
        f"- Base model: `{plan.base}`",
        f"- Base licence: {licence_text}. This model is a derivative of the base model; the "
        "base model's licence applies to it.",
        "",
        "This model has not been trained after up-scaling. Its quality is below the base "
        "model's until it is continued-pretrained (see solarbot's docs/upscale.md).",
        "",
        "## Layer map",
        "",
        "| output layer | base layer |",
        "|---:|---:|",
    ]
    body += [f"| {i} | {b} |" for i, b in enumerate(plan.layer_map)]
    return "\n".join(front + body) + "\n"


# --- the file system ----------------------------------------------------------------------------


def _check_out_vs_base(out: Path, base_dir: Path, force: bool) -> None:
    out_r, base_r = out.resolve(), base_dir.resolve()
    if out_r == base_r or (force and base_r.is_relative_to(out_r)):
        raise UpscaleError(f"--out {out} would overwrite the base model; choose another folder")


def _missing_ancestors(path: Path) -> list[Path]:
    """The folders from ``path`` upwards that don't exist yet, deepest first."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _check_disk(out: Path, needed: int) -> None:
    target = out.parent
    while not target.exists() and target != target.parent:
        target = target.parent
    free = shutil.disk_usage(target).free
    if free < needed:
        raise UpscaleError(
            f"not enough disk space for {out}: need about {_gb(needed)}, "
            f"{_gb(free)} free on {target}"
        )


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` is removed only afterwards."""
    if not out.exists() and not out.is_symlink():
        os.rename(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- the command line ---------------------------------------------------------------------------


def add_upscale_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``solarbot upscale``; the parser's default ``func`` is ``run_upscale``."""
    parser = subparsers.add_parser(
        "upscale",
        help="depth up-scale a decoder model (how SOLAR-10.7B was made from Mistral-7B)",
        description=textwrap.fill(
            "Depth up-scaling: stack two copies of an n-layer base model, dropping the last M "
            "layers of the first copy and the first M layers of the second, into 2*(n-M) "
            "layers (Mistral-7B, n=32, M=8 -> 48 layers, as in SOLAR-10.7B). Streams the "
            "safetensors weights tensor by tensor, so memory stays around one tensor. The result "
            "is not trained further: continue pretraining it before serious use "
            "(see docs/upscale.md)."
        ),
        epilog=(
            "example (the SOLAR-10.7B recipe):\n"
            "  solarbot upscale --base mistralai/Mistral-7B-v0.1 --drop 8 \\\n"
            "      --out models/mistral-dus-48l --dtype bfloat16\n"
            "then serve it with SOLARBOT_MODEL=models/mistral-dus-48l"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--base",
        required=True,
        metavar="PATH_OR_HUB_ID",
        help="the base model: a local folder with safetensors weights, or a Hugging Face Hub id",
    )
    parser.add_argument(
        "--drop",
        type=int,
        default=None,
        metavar="M",
        help="layers to drop from each copy, 0 <= M < n (default: n // 4)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="the new model folder (must not exist unless --force)",
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=None,
        help="cast floating-point weights to this dtype (default: keep the base's)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out folder (only after the new one is complete)",
    )
    parser.set_defaults(func=run_upscale)
    return parser


def run_upscale(args: argparse.Namespace) -> int:
    """Run ``solarbot upscale``: print the layer map and a summary; 0 on success, 2 on errors."""
    try:
        report = upscale(
            base=args.base,
            out=Path(args.out),
            drop=args.drop,
            dtype=args.dtype,
            force=args.force,
        )
    except UpscaleError as exc:
        print(f"solarbot upscale: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print("layer map (output layer -> base layer):")
    for out_layer, base_layer in enumerate(report.layer_map):
        print(f"  {out_layer:3d} -> {base_layer}")
    print(
        f"up-scaled {report.base} from {report.n} to {report.s} layers (dropped {report.m} per "
        f"copy) into {report.out}: {len(report.shards)} shard(s), {_gb(report.bytes_written)}"
    )
    return 0
