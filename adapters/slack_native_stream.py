"""Slack's native streaming for AI apps: ``chat.startStream`` / ``chat.appendStream`` /
``chat.stopStream`` with standard Markdown (``markdown_text``; no mrkdwn conversion).

Where: a reply in a thread (a mention's thread, an assistant thread), never a ``/solar`` answer
(its placeholder message and its response_url are edited, not streamed) nor a top-level DM reply
(streams are thread replies). ``native_surface`` decides; the adapter falls back to the edit-based
``SlackReply`` elsewhere (docs/slack.md, "Streaming").

``SlackNativeReply`` (a ``bot.delivery.ReplyStream``) for a job's first delivery:

- the first text starts a stream (``chat.startStream`` with the asker as recipient); the worker
  records the stream's ts (``ReplyStream.message_ids``) before the next call appends to it, so a
  later attempt knows the stream and never starts a second one for the same answer;
- appends are throttled like edits (``min_interval``; 429s wait out Retry-After in the SDK's
  retry handler, the request being repeated only when Slack refused it, so nothing is doubled);
- past ``limit`` characters the stream is stopped at a line or word boundary (an open code fence
  is closed there and reopened in the next stream) and the rest continues in a new stream;
- ``finish`` appends the rest and stops the stream with ``closing_blocks`` (the feedback buttons).

Append-only cannot take text back: when the final text no longer extends what was streamed (cut
at the channel's reply length, cleaned differently), when Slack ended the stream itself, and in
every later attempt of a job that streamed before (``existing_message_ids``: a worker that crashed
or failed mid-stream, whose appended text nobody can know for sure), the reply continues as
``SlackMarkdownEditReply``: the same messages, any stream still open stopped, then edited with
``chat.update`` (``markdown_text``) to the whole answer. The answer thus ends once, complete, in
the message the first attempt started, however often its workers die.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.streaming import Clock, MessageGone, Sleep, StreamedReply
from bot.delivery import ReplyStream, ReplyTarget
from bot.errors import DeliveryError, SolarbotError
from bot.splitting import split_message

log = logging.getLogger(__name__)

T = TypeVar("T")
ErrorOf = Callable[[Exception], DeliveryError]
Block = dict[str, Any]

FENCE = "```"
FENCE_RESERVE = len("\n" + FENCE)  # room kept in a stream to close a code fence open at its cut
# Slack's answers for a stream that is over (stopped by us before a crash, or expired).
STREAM_OVER_ERRORS = ("message_not_in_streaming_state", "message_not_found")


# Slack's mention syntax (<!channel>, <!here>, <@U…>, <#C…>, <!subteam^…>): a word joiner after the
# "<" keeps model text from pinging anyone, invisibly (the edit path escapes "<" instead).
_MENTION_START = re.compile(r"<(?=[!@#])")
WORD_JOINER = "\u2060"
# What a Markdown line may start with to mean more than text (fences, headings, quotes, lists,
# tables, setext underlines, emphasis).
LINE_SYNTAX = frozenset("`~#>-*+=|_")


def neutralise(text: str) -> str:
    """``text`` with Slack's mention syntax broken outside fenced code blocks (code stays as
    written). A prefix of a text neutralises to a prefix of its neutralised text unless it ends
    right after a "<" (which the stream never sends before the word it starts is complete)."""
    lines = text.split("\n")
    inside = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith(FENCE):
            inside = not inside
        elif not inside:
            lines[index] = _MENTION_START.sub("<" + WORD_JOINER, line)
    return "\n".join(lines)


def native_surface(where: Mapping[str, str]) -> bool:
    """Whether a reply to ``where`` (a job's ``reply_target``) can be streamed natively: a thread
    reply (``thread_ts``) that is not a ``/solar`` answer (placeholder ``ts``, response_url,
    ephemeral), in a DM or for a known asker (streams in channels need their recipient)."""
    if not where.get("thread_ts") or not where.get("channel"):
        return False
    if where.get("ts") or where.get("response_url") or where.get("ephemeral"):
        return False
    return where["channel"].startswith("D") or bool(where.get("user"))


def slack_error(exc: Exception) -> str:
    """The ``error`` of a Slack API failure ("" for anything else)."""
    if isinstance(exc, SlackApiError) and isinstance(exc.response.data, dict):
        return str(exc.response.data.get("error") or "")
    return ""


def fence_reopening(text: str) -> str:
    """The opening line of a code fence left open at the end of ``text`` ("" when none is)."""
    opening = ""
    for line in text.splitlines():
        if line.lstrip().startswith(FENCE):
            opening = "" if opening else line.strip()
    return opening


def cut_point(rest: str, *, sent: int, room: int) -> int:
    """Where a segment of ``rest`` ends (at most ``room`` characters, never before the ``sent``
    characters already streamed, though at the break those end with): at the last line break,
    else the last space (not one before a backtick fence, which would open a code block at the
    head of the next part), else hard at ``room``."""
    window = rest[:room]
    earliest = max(sent - 1, 1)
    at = window.rfind("\n")
    if at >= earliest:
        return at
    at = window.rfind(" ")
    while at >= earliest:
        if not rest.startswith(FENCE, at + 1):
            return at
        at = window.rfind(" ", 0, at)
    at = max(sent, room)
    while at > sent and rest[at - 1 : at + 1] == "``":
        at -= 1  # never inside a run of backticks (half a code fence)
    return at


def sendable(rest: str, *, final: bool) -> int:
    """How much of ``rest`` (a stream's part so far) to stream now: all of it at the end, else up
    to its last space or line break, so that a cut can still fall between words."""
    if final:
        return len(rest)
    return max(rest.rfind(" "), rest.rfind("\n")) + 1


class SlackMarkdownEditReply(StreamedReply):
    """A reply edited in place with standard Markdown (``chat.update`` ``markdown_text``): a
    natively streamed answer continued by a later attempt, or after its stream could not go on.
    Streams in ``open_streams`` (possibly still streaming) are stopped before their first edit."""

    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        limit: int,
        error: ErrorOf,
        min_interval: float = 1.0,
        closing_blocks: Sequence[Block] = (),
        open_streams: Sequence[str] = (),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(target, limit=limit, min_interval=min_interval, clock=clock, sleep=sleep)
        self._client = client
        self._channel = target.reply_target["channel"]
        self._thread = target.reply_target.get("thread_ts") or None
        self._error = error
        self._closing = list(closing_blocks)
        self._open = set(open_streams)

    async def _settle(self, ts: str) -> None:
        """Stop ``ts``'s stream if it may still be open (an edit would be refused meanwhile)."""
        if ts not in self._open:
            return
        try:
            await self._client.chat_stopStream(channel=self._channel, ts=ts)
        except SlackApiError as exc:
            if slack_error(exc) not in STREAM_OVER_ERRORS:
                raise
        self._open.discard(ts)

    async def post(self, text: str) -> str:
        response = await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread,
            markdown_text=text,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def edit(self, message_id: str, text: str) -> None:
        await self._settle(message_id)
        try:
            await self._client.chat_update(channel=self._channel, ts=message_id, markdown_text=text)
        except SlackApiError as exc:
            if slack_error(exc) == "message_not_found":
                self._open.discard(message_id)
                raise MessageGone(message_id) from exc
            raise

    async def discard(self, message_id: str) -> None:
        await self._settle(message_id)
        try:
            await self._client.chat_delete(channel=self._channel, ts=message_id)
        except SlackApiError as exc:
            if slack_error(exc) != "message_not_found":
                raise

    def delivery_error(self, exc: Exception) -> DeliveryError:
        return self._error(exc)

    async def update(self, text: str) -> None:
        await super().update(neutralise(text))

    async def finish(self, text: str) -> Sequence[str]:
        text = neutralise(text)
        ids = await super().finish(text)
        if self._closing and ids:
            # The answer ends with the buttons: its last message becomes a markdown block + them.
            last = (split_message(text, limit=self.limit) or [text])[-1] or "…"
            blocks = [{"type": "markdown", "text": last}, *self._closing]
            await self._call(
                self._client.chat_update(
                    channel=self._channel, ts=ids[-1], text=last, blocks=blocks
                )
            )
        return ids


class SlackNativeReply:
    """A job's first delivery into a thread, streamed natively (see the module's docstring)."""

    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        limit: int,
        error: ErrorOf,
        min_interval: float = 1.0,
        closing_blocks: Sequence[Block] = (),
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        where = target.reply_target
        self.target = target
        self._client = client
        self._channel = where["channel"]
        self._thread = where["thread_ts"]
        user = where.get("user", "")
        known = bool(user and target.conversation.workspace)
        self._recipient_team = target.conversation.workspace if known else None
        self._recipient_user = user if known else None
        self._limit = limit
        self._error = error
        self._min_interval = min_interval
        self._closing = list(closing_blocks)
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._ids: list[str] = []
        self._streaming = False  # the last stream in ``_ids`` is open
        self._offset = 0  # where the current stream's part starts in the reply text
        self._sent = 0  # characters of that part streamed so far
        self._prefix = ""  # a code fence reopened at the head of the current stream
        self._consumed = ""  # the reply text the streams hold (without fence markers)
        self._last_write: float | None = None
        self._finished = False
        self._fallback: SlackMarkdownEditReply | None = None

    # ------------------------------------------------------------------ ReplyStream

    @property
    def message_ids(self) -> Sequence[str]:
        if self._fallback is not None:
            return self._fallback.message_ids
        return tuple(self._ids)

    @property
    def limit(self) -> int:
        return self._limit

    async def update(self, text: str) -> None:
        if self._finished or not text.strip():
            return
        text = neutralise(text)
        if self._fallback is not None:
            await self._fallback.update(text)
            return
        if self._last_write is not None and self._clock() - self._last_write < self._min_interval:
            return  # throttled: a later update or finish streams the newest text
        async with self._lock:
            await self._render(text, final=False)

    async def finish(self, text: str) -> Sequence[str]:
        text = neutralise(text)
        async with self._lock:
            if self._fallback is None and self._last_write is not None:
                remaining = self._min_interval - (self._clock() - self._last_write)
                if remaining > 0:
                    await self._sleep(remaining)
            if self._fallback is None:
                await self._render(text or "…", final=True)
            if self._fallback is not None:
                ids = await self._fallback.finish(text)
            else:
                if self._streaming:
                    await self._call(
                        self._client.chat_stopStream(
                            channel=self._channel, ts=self._ids[-1], blocks=self._closing or None
                        )
                    )
                    self._streaming = False
                ids = tuple(self._ids)
            self._finished = True
            return ids

    # ------------------------------------------------------------------ internals

    async def _call(self, request: Awaitable[T]) -> T:
        try:
            return await request
        except (DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:
            error = self._error(exc)
            log.warning("job %s: streaming failed: %s", self.target.job_id, error)
            raise error from exc

    async def _render(self, text: str, *, final: bool) -> None:
        if not text.startswith(self._consumed):
            await self._fall_back(text, "the reply changed behind the streamed text")
            return
        try:
            while True:
                rest = text[self._offset :]
                room = max(self._limit - len(self._prefix) - FENCE_RESERVE, 1)
                if len(rest) <= room:
                    piece = rest[self._sent : max(self._sent, sendable(rest, final=final))]
                    if piece:
                        await self._send(piece)
                        self._sent += len(piece)
                        self._consumed = text[: self._offset + self._sent]
                    return
                cut = cut_point(rest, sent=self._sent, room=room)
                part = rest[:cut]
                if not self._streaming:
                    # A new stream starts with its whole part; it is stopped by a later call,
                    # once the worker has recorded its ts (``finish`` does both at once).
                    await self._send(part[self._sent :])
                    self._sent = cut
                    self._consumed = text[: self._offset + cut]
                    if not final:
                        return
                opening = fence_reopening(self._prefix + part)
                piece = part[self._sent :] + ("\n" + FENCE if opening else "")
                await self._send(piece, stop=True)
                skip = 1 if cut < len(rest) and rest[cut] in "\n " else 0
                self._offset += cut + skip
                self._sent = 0
                self._prefix = opening + "\n" if opening else ""
                if rest[cut : cut + 1] != "\n":
                    # The next part starts mid-line: what the line goes on with must not become
                    # line syntax at the head of a message (in code: a fence closing the block).
                    head = text[self._offset : self._offset + 1]
                    syntax = head in "`~" if opening else head in LINE_SYNTAX or head.isdigit()
                    if head and syntax:
                        self._prefix += WORD_JOINER
                self._consumed = text[: self._offset]
        except _StreamOver as over:
            await self._fall_back(text, over.reason)
        finally:
            self._last_write = self._clock()

    async def _send(self, piece: str, *, stop: bool = False) -> None:
        """Stream ``piece``: starting a stream if none is open (the current part's fence prefix
        first), else appending to the open one; ``stop`` (an open stream only) ends it with
        ``piece``. A call that starts a stream does nothing else: the stream's ts is recorded
        before anything is appended to it."""
        if not self._streaming:
            assert not stop, "a stream is started and stopped by separate calls"
            response = await self._call(
                self._client.chat_startStream(
                    channel=self._channel,
                    thread_ts=self._thread,
                    markdown_text=self._prefix + piece,
                    recipient_team_id=self._recipient_team,
                    recipient_user_id=self._recipient_user,
                )
            )
            self._ids.append(str(response["ts"]))
            self._streaming = True
            return
        ts = self._ids[-1]
        try:
            if stop:
                await self._client.chat_stopStream(
                    channel=self._channel, ts=ts, markdown_text=piece or None
                )
                self._streaming = False
            else:
                await self._client.chat_appendStream(
                    channel=self._channel, ts=ts, markdown_text=piece
                )
        except SlackApiError as exc:
            if slack_error(exc) in STREAM_OVER_ERRORS:
                raise _StreamOver(f"Slack ended the stream ({slack_error(exc)})") from exc
            raise await self._failed(exc) from exc
        except (DeliveryError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise await self._failed(exc) from exc

    async def _failed(self, exc: Exception) -> DeliveryError:
        error = self._error(exc)
        log.warning("job %s: streaming failed: %s", self.target.job_id, error)
        return error

    async def _fall_back(self, text: str, reason: str) -> None:
        """Go on by editing the same messages (the open stream stopped first)."""
        log.info("job %s: %s; editing the streamed reply instead", self.target.job_id, reason)
        open_streams = self._ids[-1:] if self._streaming else []
        self._streaming = False
        self._fallback = SlackMarkdownEditReply(
            self._client,
            dataclasses.replace(self.target, existing_message_ids=tuple(self._ids)),
            limit=self._limit,
            error=self._error,
            min_interval=self._min_interval,
            closing_blocks=self._closing,
            open_streams=open_streams,
            clock=self._clock,
            sleep=self._sleep,
        )
        await self._fallback.update(text)


class _StreamOver(SolarbotError):
    """Slack no longer accepts appends to the stream (internal: the reply falls back to edits)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def stop_streams(client: AsyncWebClient, channel: str, ids: Sequence[str]) -> None:
    """Stop any of ``ids`` still streaming (a job given up after its stream started: the apology
    follows). Streams already over, and failures, are left as they are (Slack expires streams)."""
    for ts in ids:
        try:
            await client.chat_stopStream(channel=channel, ts=ts)
        except SlackApiError as exc:
            if slack_error(exc) not in STREAM_OVER_ERRORS:
                log.info("could not stop the stream %s: %s", ts[:40], slack_error(exc))
        except Exception as exc:
            log.info("could not stop the stream %s: %s", ts[:40], type(exc).__name__)


def open_native_reply(
    client: AsyncWebClient,
    target: ReplyTarget,
    *,
    limit: int,
    error: ErrorOf,
    min_interval: float = 1.0,
    closing_blocks: Sequence[Block] = (),
) -> ReplyStream:
    """The reply for a job on a native surface: streamed on its first delivery; an attempt that
    finds messages of an earlier one (``existing_message_ids``) edits them instead."""
    if target.existing_message_ids:
        return SlackMarkdownEditReply(
            client,
            target,
            limit=limit,
            error=error,
            min_interval=min_interval,
            closing_blocks=closing_blocks,
            open_streams=target.existing_message_ids,
        )
    return SlackNativeReply(
        client,
        target,
        limit=limit,
        error=error,
        min_interval=min_interval,
        closing_blocks=closing_blocks,
    )
