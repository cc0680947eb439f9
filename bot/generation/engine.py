"""The Engine seam: a prompt (token ids) in, an async stream of text deltas out.

Implementations: ``local.TransformersEngine`` (the model on this machine's GPU or CPU, served on its
own thread with transformers' continuous batching), ``static.StaticCacheEngine`` (our own batched
decode loop with CUDA graphs), ``openai.OpenAIEngine`` (a vLLM / ``transformers serve``
server) and ``fake.FakeEngine`` (scripted replies for tests and demos).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bot.errors import EngineClosedError, GenerationError

NOT_STARTED = "the engine is not started: call `await engine.start()` first"


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """Per-request sampling. temperature == 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """One reply to generate. ``prompt_ids`` already contain BOS and the chat template."""

    request_id: str
    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # The rendered prompt that ``prompt_ids`` encode (BOS excluded), for engines that send text to
    # a server which tokenizes it itself (``openai.OpenAIEngine``). Local engines ignore it.
    prompt_text: str | None = None


@dataclass(frozen=True, kw_only=True)
class EngineHealth:
    ready: bool
    model_id: str
    device: str
    active_requests: int
    detail: str = ""


@runtime_checkable
class Tokenizer(Protocol):
    """What the conversation builder needs from a tokenizer (HF tokenizers satisfy it via an adapter)."""

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        """The chat template applied to ``messages`` as text (no BOS)."""
        ...

    def encode(self, text: str, *, add_bos: bool) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@runtime_checkable
class Engine(Protocol):
    """Text generation. ``stream`` may be called concurrently from many tasks."""

    @property
    def model_id(self) -> str: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def context_window(self) -> int: ...

    @property
    def max_concurrent_requests(self) -> int:
        """How many requests the engine generates at once (its batch / admission limit); more
        wait inside it. Exact once started. A worker runs this many jobs at once by default."""
        ...

    async def start(self) -> None:
        """Load the model and warm up. Idempotent."""
        ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        """Yield text deltas as tokens are produced; ends at EOS, a stop header or max tokens.

        Closing the generator (``contextlib.aclosing``) or cancelling the consuming task cancels
        the request and frees its cache at once.
        """
        ...

    async def cancel(self, request_id: str) -> None: ...

    def health(self) -> EngineHealth: ...

    async def close(self) -> None: ...


class StartedState:
    """What the real engines share: the tokenizer and context window they know once started
    (before that, the configured context window answers, if there is one)."""

    _tokenizer: Tokenizer | None
    _context_window: int | None
    _context_window_setting: int | None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise EngineClosedError(NOT_STARTED)
        return self._tokenizer

    @property
    def context_window(self) -> int:
        if self._context_window is not None:
            return self._context_window
        if self._context_window_setting is not None:
            return self._context_window_setting
        raise EngineClosedError(NOT_STARTED)


def checked_max_new_tokens(
    prompt: Sequence[int], *, max_new_tokens: int, context_window: int, vocab_size: int
) -> int:
    """Validate a prompt for a local engine; return ``max_new_tokens`` shortened to fit the
    context window. Raises ``GenerationError`` naming what is wrong."""
    if not prompt:
        raise GenerationError("the prompt is empty")
    if max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    room = context_window - len(prompt)
    if room <= 0:
        raise GenerationError(
            f"the prompt has {len(prompt)} tokens; the context window is {context_window}"
        )
    if any(i < 0 or i >= vocab_size for i in prompt):
        raise GenerationError("the prompt contains token ids outside the vocabulary")
    return min(max_new_tokens, room)
