"""The OpenAI-compatible engine: generation by a server (vLLM, ``transformers serve``; any other that streams ``/v1/completions``).

A fleet of workers can share GPU servers instead of each loading the model. The prompt is still
built here with the model's own tokenizer (loaded from SOLARBOT_MODEL: a local folder or a hub id),
so the token budget is exact; the rendered prompt text goes to ``POST {base}/completions`` (the
legacy completions API: our builder already applied SOLAR's chat template, and a server's chat
endpoint would apply it a second time). The server tokenizes that text with the same tokenizer and
adds BOS, so it sees exactly the ids we counted.

Replies stream as server-sent events (``"stream": true``). SOLAR's turn headers are sent as ``stop``
strings and also matched here (not every server honours ``stop`` while streaming). Closing the
stream (or ``cancel``) closes the HTTP response, which servers take as a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiohttp
from yarl import URL

from bot.errors import ConfigError, EngineClosedError, GenerationError
from bot.generation.decoding import StopMatcher
from bot.generation.engine import NOT_STARTED, EngineHealth, GenerationRequest, StartedState
from bot.generation.loading import HFTokenizer, load_tokenizer
from bot.generation.solar import STOP_HEADERS

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 4096
CONNECT_TIMEOUT_S = 10.0
# While the server is unreachable, ask it this often whether it is back (health/readiness).
PROBE_INTERVAL_S = 5.0
# Streams open to the server at once (SOLARBOT_MAX_ACTIVE_REQUESTS): the default of TGI's
# --max-concurrent-requests; vLLM batches up to 256 (--max-num-seqs) and queues the rest itself.
DEFAULT_MAX_CONCURRENT_REQUESTS = 128


class OpenAIEngine(StartedState):
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        tokenizer: str,
        api_key: str | None = None,
        offline: bool = False,
        context_window: int | None = None,
        timeout_seconds: float = 300.0,
        stop_strings: Sequence[str] = STOP_HEADERS,
        probe_interval: float = PROBE_INTERVAL_S,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if max_concurrent_requests < 1:
            raise ConfigError("SOLARBOT_MAX_ACTIVE_REQUESTS: must be >= 1")
        self._max_concurrent_requests = max_concurrent_requests
        self._base_url = base_url.rstrip("/")
        # For logs, errors and health: without any user:password@ in the URL.
        self._shown_url = str(URL(self._base_url).with_user(None))
        self._model = model
        self._tokenizer_source = tokenizer
        self._api_key = api_key
        self._offline = offline
        self._context_window_setting = context_window
        self._timeout_seconds = timeout_seconds
        self._stop_strings = tuple(stop_strings)
        self._tokenizer: HFTokenizer | None = None
        self._context_window: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._active: dict[str, asyncio.Event] = {}
        self._responses: dict[str, aiohttp.ClientResponse] = {}
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._last_error = ""
        self._probe_interval = probe_interval
        self._prober: asyncio.Task[None] | None = None

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def max_concurrent_requests(self) -> int:
        """The server batches; this many streams are kept open to it at once."""
        return self._max_concurrent_requests

    @property
    def base_url(self) -> str:
        return self._shown_url

    @property
    def tokenizer(self) -> HFTokenizer:  # narrower than StartedState's: the hub tokenizer
        if self._tokenizer is None:
            raise EngineClosedError(NOT_STARTED)
        return self._tokenizer

    async def start(self) -> None:
        async with self._start_lock:
            if self._closed:
                raise EngineClosedError("the engine was closed; create a new one")
            if self._session is not None:
                return
            self._tokenizer = await asyncio.to_thread(
                load_tokenizer, self._tokenizer_source, offline=self._offline
            )
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=self._timeout_seconds
                ),
            )
            served_window = await self._probe()
            if self._last_error:
                self._watch()
            window = self._context_window_setting or served_window
            if window is None:
                length = int(getattr(self._tokenizer.hf, "model_max_length", 0) or 0)
                window = length if 0 < length < 1_000_000 else DEFAULT_CONTEXT_WINDOW
            self._context_window = window
            logger.info(
                "using %s at %s (context window %d)",
                self._model,
                self._shown_url,
                self._context_window,
            )

    async def _probe(self) -> int | None:
        """GET /models: is the server there, and does it say how long its context is (vLLM)?"""
        try:
            async with self._http().get(f"{self._base_url}/models") as response:
                if response.status != 200:
                    self._last_error = f"GET /models answered {response.status}"
                    logger.warning("%s: %s", self._shown_url, self._last_error)
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._last_error = f"{self._shown_url} is unreachable ({type(exc).__name__})"
            logger.warning("%s; replies will be retried until it answers", self._last_error)
            return None
        self._last_error = ""
        for entry in body.get("data", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict) and entry.get("id") == self._model:
                length = entry.get("max_model_len")
                if isinstance(length, int) and length > 0:
                    return length
        return None

    def _watch(self) -> None:
        """Probe in the background until the server answers again (health() turns ready)."""
        if not self._closed and (self._prober is None or self._prober.done()):
            self._prober = asyncio.create_task(self._probe_until_up(), name="openai-probe")

    async def _probe_until_up(self) -> None:
        while not self._closed and self._last_error:
            await asyncio.sleep(self._probe_interval)
            await self._probe()
        if not self._last_error:
            logger.info("%s answers again", self._shown_url)

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._session is None:
            raise EngineClosedError(NOT_STARTED)
        return self._session

    def _payload(self, request: GenerationRequest) -> dict[str, Any]:
        tokenizer = self.tokenizer
        prompt_ids = list(request.prompt_ids)
        if not prompt_ids:
            raise GenerationError("the prompt is empty")
        room = self.context_window - len(prompt_ids)
        if room <= 0:
            raise GenerationError(
                f"the prompt has {len(prompt_ids)} tokens; the context window is "
                f"{self.context_window}"
            )
        text = request.prompt_text
        if text is None:
            bos = tokenizer.bos_token_id
            if bos is not None and prompt_ids[0] == bos:
                prompt_ids = prompt_ids[1:]  # the server's tokenizer adds BOS itself
            text = tokenizer.decode(prompt_ids)
        payload: dict[str, Any] = {
            "model": self._model,
            "prompt": text,
            "max_tokens": min(request.max_new_tokens, room),
            "stream": True,
            "stop": list(self._stop_strings),
        }
        if request.sampling.greedy:
            payload["temperature"] = 0.0
        else:
            payload["temperature"] = float(request.sampling.temperature)
            payload["top_p"] = float(request.sampling.top_p)
        return payload

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        session = self._http()
        payload = self._payload(request)
        if request.request_id in self._active:
            raise GenerationError(f"request {request.request_id!r} is already generating")
        cancelled = asyncio.Event()
        self._active[request.request_id] = cancelled
        matcher = StopMatcher(self._stop_strings)
        try:
            try:
                response = await session.post(f"{self._base_url}/completions", json=payload)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._last_error = f"{self._shown_url} is unreachable ({type(exc).__name__})"
                self._watch()
                raise GenerationError(self._last_error) from exc
            self._responses[request.request_id] = response
            async with response:
                if response.status != 200:
                    detail = (await response.text())[:300]
                    self._last_error = f"the server answered {response.status}"
                    raise GenerationError(f"{self._last_error}: {detail}")
                self._last_error = ""
                async for text in _sse_texts(response):
                    if cancelled.is_set():
                        return
                    result = matcher.feed(text)
                    if result.text:
                        yield result.text
                    if result.stopped:
                        return
                rest = matcher.flush()
                if rest:
                    yield rest
        except (aiohttp.ClientError, TimeoutError) as exc:
            if cancelled.is_set():
                return  # cancel() closed the response
            raise GenerationError(f"the stream from {self._shown_url} broke: {exc}") from exc
        finally:
            self._active.pop(request.request_id, None)
            self._responses.pop(request.request_id, None)

    async def cancel(self, request_id: str) -> None:
        event = self._active.get(request_id)
        if event is not None:
            event.set()
        response = self._responses.get(request_id)
        if response is not None:
            response.close()  # stops the server generating for a reply nobody reads

    def health(self) -> EngineHealth:
        if self._closed:
            detail = "closed"
        elif self._session is None:
            detail = "not started"
        else:
            detail = self._last_error
        return EngineHealth(
            ready=not detail,
            model_id=self._model,
            device=self._shown_url,
            active_requests=len(self._active),
            detail=detail,
        )

    async def close(self) -> None:
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            for event in self._active.values():
                event.set()
            if self._prober is not None:
                self._prober.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._prober
            if self._session is not None:
                await self._session.close()


async def _sse_texts(response: aiohttp.ClientResponse) -> AsyncGenerator[str, None]:
    """The ``choices[0].text`` of each server-sent event, until ``[DONE]`` or the end."""
    async for raw in response.content:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise GenerationError(f"the server sent a malformed event: {data[:200]}") from exc
        if not isinstance(event, dict):
            continue
        if "error" in event:
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise GenerationError(f"the server failed while generating: {message}")
        choices = event.get("choices") or []
        if choices and isinstance(choices[0], dict):
            text = choices[0].get("text")
            if isinstance(text, str) and text:
                yield text
