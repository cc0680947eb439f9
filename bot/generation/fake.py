"""The shipped fake Engine: scripted or echoing replies, streamed word by word, with fault injection.

Used by tests (assert on ``requests`` / ``prompts``) and by ``solarbot run --engine fake`` demos.
Its tokenizer is character-level and renders SOLAR's template, so prompt budgeting still applies.

With ``token_delay`` it models a batched GPU: up to ``batch_capacity`` requests generate together,
one decode step gives every one of them its next word, and a step takes ``token_delay`` seconds
however many share it; further requests wait (FIFO) for a free place, as in the real engines.
``steps`` counts the decode steps, ``first_token_step`` / ``last_token_step`` say in which step
each request got its first and last word (scheduling rounds, for tests that must not time).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Sequence

from bot.errors import EngineClosedError, GenerationError
from bot.generation.engine import EngineHealth, GenerationRequest
from bot.generation.solar import render_solar_chat

ReplyScript = Callable[[str], str]

# Requests generating at once unless batch_capacity says otherwise (as the GPU engines' default).
DEFAULT_BATCH_CAPACITY = 128

_USER_HEADER = "### User:\n"
_ASSISTANT_TAIL = "\n\n### Assistant:\n"


class FakeTokenizer:
    """One token per character (BOS = 1 first). Exact and reversible, so tests can read prompts back."""

    bos_id = 1

    def render_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
    ) -> str:
        return render_solar_chat(list(messages), add_generation_prompt=add_generation_prompt)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = [ord(char) + 3 for char in text]  # 0..2 stay free for pad/BOS/EOS, as in SOLAR
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - 3) for i in ids if i > 2)


def echo_reply(prompt: str) -> str:
    """The default script: answer with the last user message."""
    start = prompt.rfind(_USER_HEADER)
    end = prompt.rfind(_ASSISTANT_TAIL)
    if start == -1 or end < start:
        return "You said something."
    return f"You said: {prompt[start + len(_USER_HEADER) : end]}"


class FakeEngine:
    def __init__(
        self,
        *,
        script: ReplyScript = echo_reply,
        replies: Sequence[str] | None = None,
        delay_per_chunk: float = 0.0,
        start_delay: float = 0.0,
        context_window: int = 4096,
        model_id: str = "fake",
        token_delay: float = 0.0,
        batch_capacity: int = DEFAULT_BATCH_CAPACITY,
    ) -> None:
        """``start_delay``: seconds ``start()`` takes, like a model loading. ``delay_per_chunk``:
        each request sleeps on its own between words; ``token_delay``: the batched model above."""
        if batch_capacity < 1:
            raise ValueError("batch_capacity must be >= 1")
        if token_delay and delay_per_chunk:
            raise ValueError("give token_delay (batched) or delay_per_chunk, not both")
        self._script = script
        self._start_delay = start_delay
        self._replies = list(replies) if replies is not None else None
        self._delay = delay_per_chunk
        self._context_window = context_window
        self._model_id = model_id
        self._tokenizer = FakeTokenizer()
        self._active: dict[str, asyncio.Event] = {}
        self._failures: list[Exception] = []
        self._started = False
        self._closed = False
        self.requests: list[GenerationRequest] = []
        self._capacity = batch_capacity
        self._token_delay = token_delay
        self._admission = asyncio.Semaphore(batch_capacity)
        self._next_step: asyncio.Future[int] | None = None
        self._clock: asyncio.Task[None] | None = None
        self.steps = 0
        self.first_token_step: dict[str, int] = {}
        self.last_token_step: dict[str, int] = {}
        self.peak_active = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def tokenizer(self) -> FakeTokenizer:
        return self._tokenizer

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def max_concurrent_requests(self) -> int:
        return self._capacity

    @property
    def prompts(self) -> list[str]:
        """Every prompt received, decoded back to text."""
        return [self._tokenizer.decode(request.prompt_ids) for request in self.requests]

    def fail_next(self, count: int = 1, *, error: Exception | None = None) -> None:
        """The next ``count`` requests fail with ``error`` (a GenerationError by default)."""
        self._failures.extend([error or GenerationError("injected engine failure")] * count)

    async def start(self) -> None:
        if self._start_delay and not self._started:
            await asyncio.sleep(self._start_delay)
        self._started = True

    def _reply_for(self, prompt: str) -> str:
        if self._replies:
            return self._replies.pop(0)
        return self._script(prompt)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        if not self._started or self._closed:
            raise EngineClosedError("the fake engine is not running")
        self.requests.append(request)
        if self._failures:
            raise self._failures.pop(0)
        reply = self._reply_for(self._tokenizer.decode(request.prompt_ids))
        async with self._admission:  # at most batch_capacity generate at once; the rest wait
            cancelled = asyncio.Event()
            self._active[request.request_id] = cancelled
            self.peak_active = max(self.peak_active, len(self._active))
            try:
                # Each chunk is a word with its trailing space: ~1 "token"; max_new_tokens counts
                # chunks.
                for count, chunk in enumerate(re.findall(r"\S*\s*", reply)):
                    if not chunk or cancelled.is_set() or count >= request.max_new_tokens:
                        break
                    if self._token_delay:
                        step = await self._step()
                        self.first_token_step.setdefault(request.request_id, step)
                        self.last_token_step[request.request_id] = step
                    elif self._delay:
                        await asyncio.sleep(self._delay)
                    else:
                        await asyncio.sleep(0)
                    yield chunk
            finally:
                self._active.pop(request.request_id, None)

    async def _step(self) -> int:
        """Wait for the batch's next decode step; returns its number."""
        if self._next_step is None or self._next_step.done():
            self._next_step = asyncio.get_running_loop().create_future()
        if self._clock is None or self._clock.done():
            self._clock = asyncio.create_task(self._run_clock())
        return await asyncio.shield(self._next_step)

    async def _run_clock(self) -> None:
        """One step per ``token_delay`` while requests are generating; it then stops."""
        while self._next_step is not None and not self._next_step.done():
            await asyncio.sleep(self._token_delay)
            self.steps += 1
            self._next_step.set_result(self.steps)
            # Requests woken now ask for the next step before this task runs again.
            await asyncio.sleep(0)
            if self._active and (self._next_step is None or self._next_step.done()):
                self._next_step = asyncio.get_running_loop().create_future()

    async def cancel(self, request_id: str) -> None:
        event = self._active.get(request_id)
        if event is not None:
            event.set()

    def health(self) -> EngineHealth:
        return EngineHealth(
            ready=self._started and not self._closed,
            model_id=self._model_id,
            device="none",
            active_requests=len(self._active),
        )

    async def close(self) -> None:
        self._closed = True
