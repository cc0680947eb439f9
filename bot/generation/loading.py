"""Loading a model to run here, shared by the local engines (``local``, ``static``) and, for the
tokenizer, the OpenAI engine: the tokenizer wrapper, dtype/device resolution, locating the model
(a local folder, the Hugging Face cache, the hub; offline), ``from_pretrained``, the context window
the model's config allows, and the identity of a model already in memory.

Everything here blocks (file and network I/O, torch): engines call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.errors import ConfigError, ContextWindowError, GenerationError, ModelNotFoundError
from bot.generation.options import DType, LocalEngineOptions
from bot.generation.solar import SOLAR_CHAT_TEMPLATE

logger = logging.getLogger(__name__)

# How long a quick check of the hub may take before we call it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
# The context window when neither the setting nor the model's config gives one.
FALLBACK_CONTEXT_WINDOW = 4096


class HFTokenizer:
    """The ``Tokenizer`` protocol over a Hugging Face tokenizer."""

    def __init__(self, hf_tokenizer: Any) -> None:
        if not getattr(hf_tokenizer, "chat_template", None):
            hf_tokenizer.chat_template = SOLAR_CHAT_TEMPLATE
        self.hf: Any = hf_tokenizer

    @property
    def bos_token_id(self) -> int | None:
        value = self.hf.bos_token_id
        return None if value is None else int(value)

    @property
    def eos_token_id(self) -> int | None:
        value = self.hf.eos_token_id
        return None if value is None else int(value)

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        text = self.hf.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        # SOLAR's template has no BOS, so the tokenizer adds it; we add it ourselves so the result
        # does not depend on how the tokenizer's add_bos_token was saved.
        ids = [int(i) for i in self.hf(text, add_special_tokens=False).input_ids]
        bos = self.bos_token_id
        if add_bos and bos is not None:
            ids.insert(0, bos)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))


def wrap_tokenizer(raw: Any) -> Any:
    """A Hugging Face tokenizer wrapped as ``HFTokenizer``; any other object (a minimal tokenizer
    with ``decode``, for benchmarks) as it is."""
    return HFTokenizer(raw) if hasattr(raw, "apply_chat_template") else raw


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model ready to serve: on its device, in its dtype, with its tokenizer and the context
    window its config allows (``context_window_for``)."""

    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    context_window: int


def preloaded_options(
    model: Any, model_id: str | None, options: LocalEngineOptions | None
) -> LocalEngineOptions:
    """``options`` for an engine over a model already in memory: its model id and device are the
    model's own (see ``loaded_identity``)."""
    name, device = loaded_identity(model, model_id)
    return dataclasses.replace(options or LocalEngineOptions(), model=name, device=device)


def loaded_identity(model: Any, model_id: str | None) -> tuple[str, str]:
    """(model id, device) of a model already in memory: ``model_id``, else its ``name_or_path``."""
    name = model_id or str(getattr(model.config, "name_or_path", "") or "in-memory-model")
    return name, str(getattr(model, "device", "cpu"))


def context_window_for(
    config: Any, *, model: str, setting: int | None, max_new_tokens: int | None
) -> int:
    """The context window to serve with: SOLARBOT_CONTEXT_WINDOW (``setting``), at most the
    positions the model's config allows (a larger setting is cut, with a warning). Raises
    ``ContextWindowError`` when it leaves no room for a reply of ``max_new_tokens`` tokens."""
    raw_positions = getattr(config, "max_position_embeddings", None)
    max_positions = int(raw_positions) if raw_positions else None
    window = setting or max_positions or FALLBACK_CONTEXT_WINDOW
    if max_positions is not None and window > max_positions:
        logger.warning(
            "SOLARBOT_CONTEXT_WINDOW=%s exceeds the model's %s positions; using %s",
            window,
            max_positions,
            max_positions,
        )
        window = max_positions
    if max_new_tokens is not None and window <= max_new_tokens:
        if setting is not None and setting <= max_new_tokens:
            source = f"SOLARBOT_CONTEXT_WINDOW={setting}"
        else:
            source = f"the model {model!r} allows only {max_positions} positions, so the window is"
        raise ContextWindowError(
            f"{source} not larger than SOLARBOT_MAX_NEW_TOKENS={max_new_tokens}: "
            "lower SOLARBOT_MAX_NEW_TOKENS (or raise SOLARBOT_CONTEXT_WINDOW) so that prompts "
            "have room"
        )
    return window


def resolve_device(setting: str) -> str:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a concrete device, or ``ConfigError``."""
    import torch

    if setting == "cpu":
        return "cpu"
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "cuda:0" if cuda else "cpu"
    if not cuda:
        raise ConfigError(f"SOLARBOT_DEVICE: {setting} asked for, but CUDA is not available here")
    index = 0 if setting == "cuda" else _cuda_index(setting)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"SOLARBOT_DEVICE: {setting} does not exist ({torch.cuda.device_count()} GPUs)"
        )
    return f"cuda:{index}"


def resolve_dtype(setting: DType, *, on_gpu: bool) -> Any:
    """The torch dtype to load in: float32 on a CPU; on a GPU the setting (``auto``: float16)."""
    import torch

    if not on_gpu:
        if setting not in ("float32", "auto"):
            logger.warning("SOLARBOT_DTYPE=%s ignored on CPU: using float32", setting)
        return torch.float32
    return {
        "auto": torch.float16,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
    }[setting]


def load(options: LocalEngineOptions, *, preloaded: tuple[Any, Any] | None = None) -> LoadedModel:
    """The model ``options`` name, loaded (``load_model``); or ``preloaded`` (a model already in
    memory and its tokenizer, see ``from_loaded``), checked the same way (``adopt_loaded``)."""
    if preloaded is not None:
        model, raw_tokenizer = preloaded
        return adopt_loaded(
            model,
            raw_tokenizer,
            name=options.model,
            device=options.device,
            context_window=options.context_window,
            max_new_tokens=options.max_new_tokens,
        )
    return load_model(
        model=options.model,
        dtype=options.dtype,
        device=options.device,
        offline=options.offline,
        context_window=options.context_window,
        max_new_tokens=options.max_new_tokens,
    )


def load_model(
    *,
    model: str,
    dtype: DType,
    device: str,
    offline: bool,
    context_window: int | None,
    max_new_tokens: int | None,
) -> LoadedModel:
    """Locate and load a model and its tokenizer (blocking). The model's config is read and the
    context window checked (``context_window_for``) before the weights are loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_device(device)
    on_gpu = resolved.startswith("cuda")
    torch_dtype = resolve_dtype(dtype, on_gpu=on_gpu)
    source, local_only = locate_model(model, offline=offline)

    def load(loader: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return loader(source, local_files_only=local_only, **kwargs)
        except OSError as exc:
            raise ModelNotFoundError(
                not_found_message(model, str(exc).strip(), offline=offline)
            ) from exc
        except Exception as exc:
            raise GenerationError(f"could not load {model!r}: {exc}") from exc

    window = context_window_for(
        load(AutoConfig.from_pretrained),
        model=model,
        setting=context_window,
        max_new_tokens=max_new_tokens,
    )
    hf_tokenizer = load(AutoTokenizer.from_pretrained)
    model_kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": "sdpa"}
    if on_gpu:
        model_kwargs["device_map"] = {"": resolved}
    loaded = load(AutoModelForCausalLM.from_pretrained, **model_kwargs)
    return LoadedModel(
        model=loaded,
        tokenizer=HFTokenizer(hf_tokenizer),
        device=resolved,
        dtype=torch_dtype,
        context_window=window,
    )


def adopt_loaded(
    model: Any,
    raw_tokenizer: Any,
    *,
    name: str,
    device: str,
    context_window: int | None,
    max_new_tokens: int | None,
) -> LoadedModel:
    """A model already in memory (``from_loaded``), checked like a loaded one."""
    return LoadedModel(
        model=model,
        tokenizer=wrap_tokenizer(raw_tokenizer),
        device=resolve_device(device),
        dtype=model.dtype,
        context_window=context_window_for(
            model.config, model=name, setting=context_window, max_new_tokens=max_new_tokens
        ),
    )


def load_tokenizer(source: str, *, offline: bool) -> HFTokenizer:
    """Only the tokenizer of ``source`` (a folder or a hub id), for the OpenAI engine."""
    from transformers import AutoTokenizer

    local_only = offline or env_flag("HF_HUB_OFFLINE")
    try:
        hf = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except OSError as exc:
        raise ModelNotFoundError(
            f"the tokenizer of {source!r} (SOLARBOT_MODEL) was not found: "
            f"{str(exc).strip().splitlines()[0]}. The OpenAI engine counts prompt tokens "
            "with it: set SOLARBOT_MODEL to a folder holding the model's tokenizer files or "
            "to its hub id."
        ) from exc
    return HFTokenizer(hf)


def locate_model(name: str, *, offline: bool) -> tuple[str, bool]:
    """Where to load from, and whether to stay off the network. Fails fast when it cannot work."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(
                not_found_message(name, f"{path} is a file, not a folder", offline=offline)
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                not_found_message(name, f"{path} has no config.json", offline=offline)
            )
        return str(path), True
    if _looks_like_path(name):
        raise ModelNotFoundError(
            not_found_message(name, f"there is no folder {path}", offline=offline)
        )
    if offline or env_flag("HF_HUB_OFFLINE"):
        return name, True
    reason = _hub_unreachable()
    if reason is None:
        return name, False
    if _in_hub_cache(name):
        logger.warning("the hub is unreachable (%s); loading %s from the local cache", reason, name)
        return name, True
    raise ModelNotFoundError(
        not_found_message(
            name,
            f"it is not in the local Hugging Face cache and the hub is unreachable ({reason})",
            offline=offline,
        )
    )


def not_found_message(name: str, reason: str, *, offline: bool) -> str:
    note = "SOLARBOT_OFFLINE=true, so only local files are used. " if offline else ""
    return (
        f"Model {name!r} not found: {reason}. {note}"
        "Set SOLARBOT_MODEL to a local folder holding the model (config.json, tokenizer files, "
        "weights), or a Hugging Face hub id with the hub reachable and SOLARBOT_OFFLINE=false "
        "(the first download of SOLAR is ~21 GB)."
    )


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _cuda_index(setting: str) -> int:
    try:
        return int(setting.removeprefix("cuda:"))
    except ValueError:
        raise ConfigError(f"SOLARBOT_DEVICE: bad GPU index in {setting!r}") from None


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else must be a local folder."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
    )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def _hub_unreachable() -> str | None:
    """None if the hub answers a TCP connection quickly, else why not (instead of ~25 s of retries)."""
    try:
        from huggingface_hub import constants

        endpoint = str(constants.ENDPOINT)
    except Exception:
        endpoint = "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with contextlib.closing(
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S)
        ):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
