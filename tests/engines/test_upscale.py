"""Depth up-scaling (``solarbot upscale``) on tiny Llama and Mistral bases built here."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bot.errors import SolarbotError, UpscaleError
from bot.tools import upscale as upscale_module
from bot.tools.upscale import (
    HUB_ALLOW_PATTERNS,
    add_upscale_parser,
    layer_map,
    run_upscale,
    upscale,
)
from tests.support.tiny_model import build_tiny_solar

REPO_ROOT = Path(__file__).resolve().parents[2]
N, M, S = 8, 2, 12
BASE_README = "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# A tiny base\n"


# --- bases --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = build_tiny_solar(tmp_path_factory.mktemp("llama") / "base", layers=N)
    (base / "README.md").write_text(BASE_README, encoding="utf-8")
    return base


@pytest.fixture(scope="module")
def mistral_base(tmp_path_factory: pytest.TempPathFactory, llama_base: Path) -> Path:
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    base = tmp_path_factory.mktemp("mistral") / "base"
    torch.manual_seed(1)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    MistralForCausalLM(config).save_pretrained(base)
    generation_config: Any = GenerationConfig
    generation_config(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(base)
    for path in llama_base.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, base / path.name)
    return base


@pytest.fixture(params=["llama", "mistral"])
def base(request: pytest.FixtureRequest) -> Path:
    fixture: Path = request.getfixturevalue(f"{request.param}_base")
    return fixture


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in list(handle.keys()):
                assert name not in tensors
                tensors[name] = handle.get_tensor(name)
    return tensors


def raw(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def expected_name(name: str, lmap: list[int]) -> dict[str, str]:
    """Output tensor name -> base tensor name for one base tensor name (all its copies)."""
    parts = name.split(".")
    if name.startswith("model.layers."):
        layer, rest = int(parts[2]), ".".join(parts[3:])
        return {f"model.layers.{i}.{rest}": name for i, b in enumerate(lmap) if b == layer}
    return {name: name}


def load_with_info(folder: Path) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    loaded: Any = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    return loaded[0], loaded[1]


def entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- the layer map ------------------------------------------------------------------------------


def test_layer_map_is_solar_recipe() -> None:
    assert layer_map(32, 8) == list(range(0, 24)) + list(range(8, 32))
    assert len(layer_map(32, 8)) == 48
    assert layer_map(N, M) == [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7]
    assert layer_map(4, 0) == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize(("n", "m"), [(8, 8), (8, 9), (8, -1), (0, 0)])
def test_layer_map_rejects_bad_drop(n: int, m: int) -> None:
    with pytest.raises(UpscaleError):
        layer_map(n, m)
    assert issubclass(UpscaleError, SolarbotError)


# --- up-scaling ---------------------------------------------------------------------------------


def test_upscale_copies_every_layer_byte_for_byte(base: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "up"
    report = upscale(base=str(base), out=out, drop=M, progress=False)

    lmap = layer_map(N, M)
    assert (report.n, report.m, report.s, list(report.layer_map)) == (N, M, S, lmap)
    assert report.out == out and report.base == str(base)
    assert entries(tmp_path) == ["up"]  # no partial or old folders left behind

    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["num_hidden_layers"] == S
    assert {k: v for k, v in config.items() if k != "num_hidden_layers"} == {
        k: v for k, v in base_config.items() if k != "num_hidden_layers"
    }

    base_tensors, out_tensors = read_tensors(base), read_tensors(out)
    wanted: dict[str, str] = {}
    for name in base_tensors:
        wanted.update(expected_name(name, lmap))
    assert set(out_tensors) == set(wanted)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(wanted)
    assert len({k for k in out_tensors if k.startswith("model.layers.")}) == S * 9
    for out_name, base_name in wanted.items():
        assert out_tensors[out_name].dtype == base_tensors[base_name].dtype, out_name
        assert raw(out_tensors[out_name]) == raw(base_tensors[base_name]), out_name

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(wanted)
    assert set(index["weight_map"].values()) == set(report.shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in out_tensors.values())
    assert report.bytes_written == sum(p.stat().st_size for p in out.iterdir())

    copied = {p.name for p in base.iterdir()} - {"config.json", "README.md", "model.safetensors"}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= copied
    for name in copied:
        assert (out / name).read_bytes() == (base / name).read_bytes(), name

    card = (out / "README.md").read_text()
    assert f"`{base}`" in card
    assert "| 11 | 7 |" in card and "| 6 | 2 |" in card
    if base.joinpath("README.md").exists():
        assert card.startswith("---\nlicense: apache-2.0\n")
    else:
        assert "unknown — check the base model's licence" in card

    model, info = load_with_info(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == S and len(model.model.layers) == S
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("Hello there", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_default_drop_is_a_quarter(llama_base: Path, tmp_path: Path) -> None:
    report = upscale(base=str(llama_base), out=tmp_path / "up", progress=False)
    assert (report.m, report.s) == (2, 12)


def test_small_shards_and_index(llama_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "up"
    limit = 1024 * 1024  # embeddings (8 MB) get a shard each; the layers share a few
    report = upscale(base=str(llama_base), out=out, drop=M, max_shard_bytes=limit, progress=False)

    assert len(report.shards) > 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(report.shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(report.shards)
    for shard in report.shards:
        with safe_open(str(out / shard), framework="pt") as handle:
            names = list(handle.keys())
            sizes = [handle.get_tensor(name).numel() * 4 for name in names]
        assert len(names) == 1 or sum(sizes) <= limit
        assert all(index["weight_map"][name] == shard for name in names)
    assert len(read_tensors(out)) == 3 + S * 9

    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == S


def test_dtype_conversion(llama_base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "up"
    upscale(base=str(llama_base), out=out, drop=M, dtype="float16", progress=False)

    base_tensors, out_tensors = read_tensors(llama_base), read_tensors(out)
    assert all(t.dtype == torch.float32 for t in base_tensors.values())
    assert all(t.dtype == torch.float16 for t in out_tensors.values())
    lmap = layer_map(N, M)
    for base_name, tensor in base_tensors.items():
        for out_name in expected_name(base_name, lmap):
            assert raw(out_tensors[out_name]) == raw(tensor.to(torch.float16)), out_name
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16


def test_force_replaces_only_after_success(llama_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "up"
    out.mkdir()
    (out / "old.txt").write_text("old")
    upscale(base=str(llama_base), out=out, drop=M, force=True, progress=False)
    assert not (out / "old.txt").exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == S
    assert entries(tmp_path) == ["up"]


def test_hub_id_goes_through_snapshot_download(
    llama_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, Any]] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(llama_base)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    out = tmp_path / "up"
    report = upscale(base="someone/tiny-base", out=out, drop=M, progress=False)
    assert calls == [("someone/tiny-base", HUB_ALLOW_PATTERNS)]
    assert report.s == S
    card = (out / "README.md").read_text()
    assert "base_model: someone/tiny-base" in card and "license: apache-2.0" in card


def test_tied_embeddings_drop_the_redundant_lm_head(llama_base: Path, tmp_path: Path) -> None:

    tensors = read_tensors(llama_base)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tied = copy_base(llama_base, tmp_path / "tied", config={"tie_word_embeddings": True})
    save_file(tensors, str(tied / "model.safetensors"), metadata={"format": "pt"})

    out = tmp_path / "up"
    upscale(base=str(tied), out=out, drop=M, progress=False)
    assert "lm_head.weight" not in read_tensors(out)
    model, info = load_with_info(out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"])


def test_per_layer_config_lists_follow_the_layer_map(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=16,
        max_window_layers=6,
    )
    base = tmp_path / "qwen"
    Qwen2ForCausalLM(config).save_pretrained(base)
    assert config.layer_types == ["full_attention"] * 6 + ["sliding_attention"] * 2

    out = tmp_path / "up"
    upscale(base=str(base), out=out, drop=M, progress=False)
    written = json.loads((out / "config.json").read_text())
    # Output layers 0..9 are base layers 0..5, 2..5 (full); 10, 11 are base 6, 7 (sliding).
    assert written["layer_types"] == ["full_attention"] * 10 + ["sliding_attention"] * 2
    assert written["max_window_layers"] == 10
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.layer_types == written["layer_types"]


# --- memory -------------------------------------------------------------------------------------

MEMORY_SCRIPT = """
import json, sys
from pathlib import Path
import safetensors.torch, torch, tqdm
from bot.tools.upscale import upscale

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

baseline = status("VmRSS")
report = upscale(base=sys.argv[1], out=Path(sys.argv[2]), drop=1, progress=False)
print(json.dumps({
    "baseline": baseline,
    "peak": status("VmHWM"),
    "bytes_written": report.bytes_written,
    "shards": len(report.shards),
}))
"""


def build_big_llama(out: Path, *, layers: int = 6, hidden: int = 1024, inter: int = 2816) -> int:
    """A ~330 MB float32 Llama in several shards, written directly (no model in memory)."""
    from transformers import LlamaConfig

    vocab = 2000
    LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    ).save_pretrained(out)
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    shards: list[dict[str, torch.Tensor]] = [{"model.embed_tokens.weight": rand(vocab, hidden)}]
    for layer in range(layers):
        if layer % 2 == 0 and layer:
            shards.append({})
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shards[-1][f"{p}self_attn.{name}.weight"] = rand(hidden, hidden)
        shards[-1][f"{p}mlp.gate_proj.weight"] = rand(inter, hidden)
        shards[-1][f"{p}mlp.up_proj.weight"] = rand(inter, hidden)
        shards[-1][f"{p}mlp.down_proj.weight"] = rand(hidden, inter)
        shards[-1][f"{p}input_layernorm.weight"] = torch.ones(hidden)
        shards[-1][f"{p}post_attention_layernorm.weight"] = torch.ones(hidden)
    shards[-1]["model.norm.weight"] = torch.ones(hidden)
    shards[-1]["lm_head.weight"] = rand(vocab, hidden)

    weight_map: dict[str, str] = {}
    total = 0
    for i, tensors in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    shards.clear()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_stays_far_below_model_size(tmp_path: Path) -> None:
    base = tmp_path / "big"
    model_bytes = build_big_llama(base)
    assert model_bytes > 300 * 1024**2
    out = tmp_path / "up"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(base), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    increase = stats["peak"] - stats["baseline"]
    print(
        f"\nbase model {model_bytes / 2**20:.0f} MiB, output {stats['bytes_written'] / 2**20:.0f} "
        f"MiB in {stats['shards']} shard(s); RSS baseline {stats['baseline'] / 2**20:.0f} MiB, "
        f"peak {stats['peak'] / 2**20:.0f} MiB, "
        f"increase {increase / 2**20:.0f} MiB = {increase / model_bytes:.1%} of the model"
    )
    # VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the high-water mark of the forked pytest
    # process from before exec, which is unrelated to up-scaling.
    # One 2 GB shard holds the whole output, so this also shows that shards are streamed.
    assert stats["shards"] == 1
    assert stats["bytes_written"] > model_bytes
    assert increase < 0.5 * model_bytes


# --- bad input: a clear error and nothing left behind ---------------------------------------------


def write_fake_base(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def copy_base(
    src: Path, dst: Path, *, config: dict[str, Any], drop: set[str] | None = None
) -> Path:
    shutil.copytree(src, dst)
    merged = {**json.loads((src / "config.json").read_text()), **config}
    (dst / "config.json").write_text(json.dumps(merged))
    if drop is not None:
        tensors = {k: v for k, v in read_tensors(src).items() if k not in drop}
        save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


Case = Callable[[Path, Path], tuple[dict[str, Any], str]]


def case_drop_too_big(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    return {"base": str(base), "drop": N}, "between 0 and 7"


def case_drop_negative(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    return {"base": str(base), "drop": -1}, "between 0 and 7"


def case_missing_folder(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    return {"base": str(work / "nope" / "base")}, "no such folder"


def case_encoder_weights(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    config = {"model_type": "t5", "num_hidden_layers": 2}
    tensors = {f"encoder.block.{i}.weight": torch.zeros(2) for i in range(2)}
    return {"base": str(write_fake_base(work / "t5", config, tensors))}, "not a decoder"


def case_encoder_decoder(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    config = {"num_hidden_layers": 2, "is_encoder_decoder": True}
    tensors = {"model.layers.0.w": torch.zeros(2), "model.layers.1.w": torch.zeros(2)}
    return {"base": str(write_fake_base(work / "ed", config, tensors))}, "not a decoder-only"


def case_layer_count_mismatch(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    folder = copy_base(base, work / "b", config={"num_hidden_layers": N + 1})
    return {"base": str(folder)}, "num_hidden_layers=9"


def case_bin_only(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    folder = work / "bin"
    folder.mkdir()
    shutil.copy(base / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not really a checkpoint")
    return {"base": str(folder)}, ".bin"


def case_untied_without_lm_head(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    folder = copy_base(base, work / "b", config={}, drop={"lm_head.weight"})
    return {"base": str(folder)}, "no lm_head.weight"


def case_tied_but_different(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    folder = copy_base(base, work / "b", config={"tie_word_embeddings": True})
    return {"base": str(folder)}, "differs from model.embed_tokens.weight"


def case_out_exists(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("mine")
    return {"base": str(base)}, "already exists"


def case_out_is_base(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    folder = copy_base(base, work / "out", config={})
    return {"base": str(folder), "force": True}, "would overwrite the base"


def case_bad_dtype(base: Path, work: Path) -> tuple[dict[str, Any], str]:
    return {"base": str(base), "dtype": "int8"}, "--dtype"


CASES: list[Case] = [
    case_drop_too_big,
    case_drop_negative,
    case_missing_folder,
    case_encoder_weights,
    case_encoder_decoder,
    case_layer_count_mismatch,
    case_bin_only,
    case_untied_without_lm_head,
    case_tied_but_different,
    case_out_exists,
    case_out_is_base,
    case_bad_dtype,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.removeprefix("case_") for c in CASES])
def test_bad_input_errors_and_leaves_nothing(case: Case, llama_base: Path, tmp_path: Path) -> None:
    kwargs, message = case(llama_base, tmp_path)
    before = entries(tmp_path)
    out = tmp_path / "out"
    out_before = entries(out) if out.exists() else None
    with pytest.raises(UpscaleError) as caught:
        upscale(out=out, progress=False, **kwargs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert entries(tmp_path) == before
    assert (entries(out) if out.exists() else None) == out_before


def test_not_enough_disk(llama_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(total=1, used=0, free=1000))
    with pytest.raises(UpscaleError, match="not enough disk space"):
        upscale(base=str(llama_base), out=tmp_path / "deep" / "out", drop=M, progress=False)
    assert entries(tmp_path) == []


def test_hub_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(repo_id: str, **kwargs: Any) -> str:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UpscaleError, match="Hugging Face Hub") as caught:
        upscale(base="someone/base", out=tmp_path / "out", progress=False)
    assert "Network is unreachable" in str(caught.value)
    assert entries(tmp_path) == []


def test_failure_mid_write_cleans_up_and_keeps_old_output(
    llama_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nested" / "out"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    real_load = upscale_module._load
    calls = 0

    def failing_load(src: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise OSError("No space left on device")
        return real_load(src)

    monkeypatch.setattr(upscale_module, "_load", failing_load)
    with pytest.raises(UpscaleError, match="No space left on device"):
        upscale(base=str(llama_base), out=out, drop=M, force=True, progress=False)
    assert calls == 20
    assert entries(out.parent) == ["out"]
    assert entries(out) == ["keep.txt"]

    fresh = tmp_path / "a" / "b" / "out"
    calls = 0
    with pytest.raises(UpscaleError):
        upscale(base=str(llama_base), out=fresh, drop=M, progress=False)
    assert not (tmp_path / "a").exists()  # folders it created are removed again


# --- the command line ---------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="solarbot")
    add_upscale_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prints_layer_map(
    llama_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "up"
    args = make_parser().parse_args(
        ["upscale", "--base", str(llama_base), "--drop", "2", "--out", str(out)]
    )
    assert args.func is run_upscale
    assert run_upscale(args) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == "layer map (output layer -> base layer):"
    assert [line.split() for line in stdout[1 : 1 + S]] == [
        [str(i), "->", str(b)] for i, b in enumerate(layer_map(N, M))
    ]
    assert len(stdout) == S + 2
    assert f"from {N} to {S} layers" in stdout[-1]
    assert (out / "config.json").exists()


def test_cli_bad_drop_is_one_line_exit_2(
    llama_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "up"
    args = make_parser().parse_args(
        ["upscale", "--base", str(llama_base), "--drop", "8", "--out", str(out)]
    )
    assert run_upscale(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "--drop must be between 0 and 7" in lines[0]
    assert not out.exists() and entries(tmp_path) == []


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_parser().parse_args(["upscale", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--base", "--drop", "--out", "--dtype", "--force"):
        assert option in text


def test_solarbot_serves_an_upscaled_model_through_the_console(tmp_path: Path) -> None:
    """Up-scale a tiny SOLAR-shaped base (4 -> 6 layers), then chat with it via `solarbot chat`."""
    from tests.support.processes import solarbot
    from tests.support.tiny_model import build_tiny_solar

    base = build_tiny_solar(tmp_path / "base", layers=4)
    out = tmp_path / "upscaled"
    report = upscale(base=str(base), out=out, drop=1, progress=False)
    assert report.s == 6 and list(report.layer_map) == [0, 1, 2, 1, 2, 3]
    env = {
        "SOLARBOT_MODEL": str(out),
        "SOLARBOT_DEVICE": "cpu",
        "SOLARBOT_DATA_DIR": str(tmp_path / "data"),
        "SOLARBOT_MAX_NEW_TOKENS": "8",
        "SOLARBOT_TEMPERATURE": "0",
    }
    result = solarbot("chat", env=env, stdin="Hello upscaled model\n", timeout=180)
    assert result.returncode == 0, result.stderr
    reply = result.stdout.removeprefix("solarbot [#general]: ")
    assert result.stdout.startswith("solarbot [#general]: ") and reply.strip()
