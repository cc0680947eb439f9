"""How much room a channel's system prompt leaves, in the model's own tokens (issue 13, item 19).

An admin sets a channel prompt with a chat command (``prompt TEXT``, ``bot.commands``). Every reply
in that channel is built from ``context_window - max_new_tokens`` prompt tokens (``bot.conversation``):
the system prompt first, then the newest turns that fit. A prompt that fills the budget leaves no room
for any question, so the command measures it with the tokenizer and the same template the worker
uses, refuses one that leaves less than ``minimum_room`` tokens for history + question, and says how
much room an accepted one leaves.

``MIN_ROOM_TOKENS`` (1,024) is the minimum: about 700 English words of question and recent history,
enough for a long question with some context. With a small context window it is half the budget
instead, so that a prompt can always use the other half, but never less than what a question cut
to fit needs (the truncation marker and a character of the question): a too-long question in a
channel whose prompt was accepted is cut with its notice, never refused.

Where commands run: in the process that receives the platform's events. With the model in the same
process (``solarbot run``) the gauge uses the engine's tokenizer once the model is loaded. A process
without an engine (``--role adapters``) loads only the tokenizer's files (a few MB, no weights, no
torch: ``FileTokenizer``) in a background thread at start; a hub model id needs its tokenizer files
in the Hugging Face cache (or the hub reachable), a folder needs nothing else. Until the gauge is
ready, or when the tokenizer cannot be loaded (a warning says why), a prompt is checked in
characters only and the reply says its room is unknown.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.conversation import TRUNCATION_MARKER
from bot.generation.engine import Tokenizer
from bot.generation.solar import SOLAR_CHAT_TEMPLATE

log = logging.getLogger(__name__)

MIN_ROOM_TOKENS = 1024


def minimum_room(budget: int) -> int:
    """Tokens a channel prompt must leave for history + question: ``MIN_ROOM_TOKENS``, or half
    the prompt budget when that is smaller."""
    return min(MIN_ROOM_TOKENS, budget // 2)


@dataclass(frozen=True, kw_only=True)
class PromptRoom:
    prompt_tokens: int  # what the system prompt adds to every prompt in the channel
    room: int  # tokens left for the conversation's history and the question
    minimum: int  # the least room a prompt may leave

    @property
    def enough(self) -> bool:
        return self.room >= self.minimum


class PromptGauge:
    """Measures system prompts once it knows a tokenizer and the token budget (``attach``);
    thread-safe, blocking (call ``measure`` through ``asyncio.to_thread``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizer: Tokenizer | None = None
        self._budget = 0

    def attach(self, tokenizer: Tokenizer, *, context_window: int, max_new_tokens: int) -> None:
        with self._lock:
            self._tokenizer = tokenizer
            self._budget = max(0, context_window - max_new_tokens)

    @property
    def ready(self) -> bool:
        return self._tokenizer is not None

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The model's tokenizer, once attached (learned chat messages are counted with it)."""
        return self._tokenizer

    def measure(self, system_prompt: str) -> PromptRoom | None:
        """The room ``system_prompt`` leaves (None: no tokenizer yet). The room is what a user
        message's content may take: the template's headers, BOS and the generation prompt are
        already counted."""
        with self._lock:
            tokenizer, budget = self._tokenizer, self._budget
        if tokenizer is None:
            return None
        empty_question = [{"role": "user", "content": ""}]

        def tokens(messages: list[dict[str, str]]) -> int:
            text = tokenizer.render_chat(messages, add_generation_prompt=True)
            return len(tokenizer.encode(text, add_bos=True))

        bare = tokens(empty_question)
        with_prompt = tokens([{"role": "system", "content": system_prompt}, *empty_question])
        # A question cut to fit keeps at least one character, then the marker.
        cut = tokens([{"role": "user", "content": "?" + TRUNCATION_MARKER}]) - bare
        return PromptRoom(
            prompt_tokens=with_prompt - bare,
            room=budget - with_prompt,
            minimum=max(minimum_room(budget), cut),
        )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json")


class FileTokenizer:
    """A model's tokenizer from its files alone, for a process without an engine: ``tokenizer.json``
    through the ``tokenizers`` library (what transformers' fast tokenizers run) and the chat
    template (``chat_template.jinja`` or ``tokenizer_config.json``, else SOLAR's) rendered the way
    transformers renders it. Neither torch nor transformers is imported (they take ~400 MB and
    ~10 s to import); the ids equal ``HFTokenizer``'s (tests/platforms/test_platform_abuse.py)."""

    def __init__(self, folder: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer as RustTokenizer

        self._rust = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config: dict[str, Any] = (
            json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        )
        template_file = folder / "chat_template.jinja"
        template = (
            template_file.read_text(encoding="utf-8")
            if template_file.is_file()
            else config.get("chat_template")
        )
        if not isinstance(template, str) or not template:
            template = SOLAR_CHAT_TEMPLATE
        self._bos = _token_text(config.get("bos_token"), "<s>")
        self._eos = _token_text(config.get("eos_token"), "</s>")
        self.bos_token_id = self._rust.token_to_id(self._bos)
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = environment.from_string(template)

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        )

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = [int(i) for i in self._rust.encode(text, add_special_tokens=False).ids]
        if add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._rust.decode(list(ids), skip_special_tokens=True))


def _token_text(value: object, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default


def load_tokenizer(
    model: str, *, offline: bool, context_window: int | None
) -> tuple[Tokenizer, int]:
    """The tokenizer of ``model`` (a local folder, or a hub id: its tokenizer files only, from the
    cache when ``offline``) and its context window (the setting, else the model's config).
    Blocking; raises when the files cannot be had."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(model, allow_patterns=list(TOKENIZER_FILES), local_files_only=offline)
        )
    tokenizer = FileTokenizer(folder)
    if context_window is None:
        config_file = folder / "config.json"
        config = (
            json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        )
        context_window = int(config.get("max_position_embeddings") or 4096)
    return tokenizer, context_window
