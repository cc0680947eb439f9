"""A reusable streamed reply over two platform primitives: post a message, edit a message.

``StreamedReply`` implements ``bot.delivery.ReplyStream``. A subclass supplies ``post(text) -> id``
and ``edit(id, text)`` (optionally ``discard(id)`` and ``delivery_error(exc)``); the base class:

- throttles writes: after a write, ``update`` calls within ``min_interval`` seconds are skipped (the
  newest text is delivered by a later update or by ``finish``, which waits out the interval), and
  the interval counts from the end of the last request, so a platform that makes a request wait
  (429 handled inside the client) pushes the next edit back instead of piling edits up;
- splits with ``bot.splitting.split_message`` at the platform's ``limit``: a chunk that stops being
  the last one is edited to its final text once, later chunks are posted as follow-up messages;
- continues an earlier attempt of the same job: ``existing_message_ids`` are edited, never reposted,
  and ids the new reply does not need are discarded at ``finish``;
- converts anything the primitives raise into ``DeliveryError`` (the worker retries it).

Text hygiene is not done here: the worker opens replies through ``bot.delivery.open_clean_reply``,
which cleans every text for every platform before any adapter sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from bot.delivery import ReplyTarget
from bot.errors import DeliveryError, SolarbotError
from bot.splitting import split_message

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class MessageGone(SolarbotError):
    """Raised by ``edit`` when the message no longer exists (deleted by a user or moderator):
    the base class posts a new message in its place."""


class StreamedReply:
    def __init__(
        self,
        target: ReplyTarget,
        *,
        limit: int,
        min_interval: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shown: Sequence[str | None] = (),
    ) -> None:
        self.target = target
        self._limit = limit
        self._min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._ids: list[str] = list(target.existing_message_ids)
        # What each message shows now as far as we know (None: posted by an earlier attempt).
        # ``shown`` may say what some of them show (a placeholder posted by this process).
        self._shown: list[str | None] = [
            shown[index] if index < len(shown) else None for index in range(len(self._ids))
        ]
        self._last_write: float | None = None
        self._lock = asyncio.Lock()
        self._finished = False
        self._text_started = False

    # ------------------------------------------------------------------ for subclasses

    async def post(self, text: str) -> str:
        """Post a new message holding ``text``; return its platform id."""
        raise NotImplementedError

    async def edit(self, message_id: str, text: str) -> None:
        """Replace the text of a message this reply posted (raise ``MessageGone`` if deleted)."""
        raise NotImplementedError

    async def discard(self, message_id: str) -> None:
        """A message an earlier attempt posted that the final reply does not need (default: blank
        it with a marker; platforms that can delete should)."""
        await self.edit(message_id, "…")

    def delivery_error(self, exc: Exception) -> DeliveryError:
        """Turn a platform client's exception into a DeliveryError (override to add retry_after)."""
        return DeliveryError(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ ReplyStream

    @property
    def message_ids(self) -> Sequence[str]:
        return tuple(self._ids)

    @property
    def limit(self) -> int:
        return self._limit

    async def start(self, placeholder: str) -> None:
        """Show ``placeholder`` at once: posted unless an earlier attempt's message is reused."""
        async with self._lock:
            if not self._ids:
                self._ids.append(await self._call(self.post(placeholder)))
                self._shown.append(placeholder)
                self._last_write = self._clock()

    async def show_status(self, text: str) -> None:
        """Replace the placeholder (e.g. a queue position) before any reply text arrived."""
        async with self._lock:
            if self._text_started or self._finished or len(self._ids) != 1:
                return
            if self._shown[0] is None:
                return  # an earlier attempt's reply text: keep it until the new text arrives
            if self._shown[0] != text:
                await self._call(self.edit(self._ids[0], text))
                self._shown[0] = text
                self._last_write = self._clock()

    async def update(self, text: str) -> None:
        if self._finished or not text.strip():
            return
        if self._last_write is not None and self._clock() - self._last_write < self._min_interval:
            return  # throttled: a later update or finish delivers the newest text
        async with self._lock:
            await self._render(text, final=False)

    async def finish(self, text: str) -> Sequence[str]:
        async with self._lock:
            if self._last_write is not None:
                remaining = self._min_interval - (self._clock() - self._last_write)
                if remaining > 0:
                    await self._sleep(remaining)
            await self._render(text, final=True)
            self._finished = True
            return tuple(self._ids)

    # ------------------------------------------------------------------ internals

    async def _call(self, request: Awaitable[T]) -> T:
        try:
            return await request
        except (DeliveryError, MessageGone, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = self.delivery_error(exc)
            log.warning("job %s: delivery failed: %s", self.target.job_id, error)
            raise error from exc

    async def _render(self, text: str, *, final: bool) -> None:
        chunks = split_message(text, limit=self._limit) or [text]
        self._text_started = True
        try:
            for index, chunk in enumerate(chunks):
                if index < len(self._ids):
                    if self._shown[index] != chunk:
                        try:
                            await self._call(self.edit(self._ids[index], chunk))
                        except MessageGone:
                            log.info(
                                "job %s: a reply message was deleted; reposting", self.target.job_id
                            )
                            self._ids[index] = await self._call(self.post(chunk))
                        self._shown[index] = chunk
                else:
                    self._ids.append(await self._call(self.post(chunk)))
                    self._shown.append(chunk)
            if final and len(self._ids) > len(chunks):
                for message_id in self._ids[len(chunks) :]:
                    await self._call(self.discard(message_id))
                del self._ids[len(chunks) :]
                del self._shown[len(chunks) :]
        finally:
            self._last_write = self._clock()
