"""A faithful tiny stand-in for SOLAR: SOLAR's real tokenizer + chat template, a random 2-layer Llama.

SOLAR's ``tokenizer.model`` is byte-identical to ``mistral_common/data/tokenizer.model.v1`` (shipped
on PyPI); we verify that by sha256 so a changed wheel cannot silently change the test model.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

SOLAR_TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


def solar_tokenizer_file() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOLAR_TOKENIZER_SHA256:
        raise RuntimeError(f"{path} is not SOLAR's tokenizer (sha256 {digest})")
    return path


def build_tiny_solar(out: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """Write a tiny random Llama with SOLAR's vocabulary, tokenizer and template into ``out``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    from bot.generation.solar import SOLAR_CHAT_TEMPLATE

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(solar_tokenizer_file(), Path(tmp) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False)
    tokenizer.chat_template = SOLAR_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(out)
    return out


def config_only_copy(model_dir: Path, out: Path, *, max_positions: int) -> Path:
    """A folder holding only ``model_dir``'s config.json, allowing ``max_positions`` positions: no
    tokenizer, no weights, so anything that reads more than the config fails on it."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = max_positions
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config))
    return out
