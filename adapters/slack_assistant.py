"""Slack's Agents & Assistants surface, through bolt's ``AsyncAssistant`` middleware.

When the app's assistant view is on (``SOLARBOT_SLACK_ASSISTANT``; manifest ``assistant_view``,
scope ``assistant:write``), a person opens an assistant thread (a thread in the bot's DM):

- ``assistant_thread_started``: the bot greets them (``texts.SLACK_ASSISTANT_GREETING``) and sets
  the suggested prompts (``SOLARBOT_SLACK_SUGGESTED_PROMPTS``), once per thread (Slack's retries
  of the event are recognised);
- ``user_message``: the message takes the adapter's normal way in (``Intake.submit``: limits,
  handoff, dedupe) and the worker answers in the thread, streamed natively
  (``adapters.slack_native_stream``: an assistant thread is a DM thread); the first question
  becomes the thread's title (``set_title``); while the job waits the status reads "is thinking…"
  with its queue position, then "is thinking…" while it generates (Slack clears a status when the
  answer is posted; a status is refreshed before Slack's two-minute expiry);
- ``assistant_thread_context_changed`` (the person looks at another channel): noted in the log;
  answers do not depend on it.

Status updates come from a task per question that reads the job's state from the store (so they
work when a separate worker process answers) and stops once the answer has started (its first
message is recorded) or the job is over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import (
    AsyncAssistant,
    AsyncSetStatus,
    AsyncSetSuggestedPrompts,
    AsyncSetTitle,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import texts
from bot.delivery import IntakePort
from bot.records import EnqueueResult, JobStatus

log = logging.getLogger(__name__)

TITLE_CHARS = 80  # of the first question, as the thread's title
STATUS_REFRESH_SECONDS = 60.0  # Slack drops a status after two minutes without a reply
REMEMBERED_THREADS = 10_000  # threads greeted lately (Slack retries thread_started)

Submit = Callable[[dict[str, Any], dict[str, Any]], Awaitable[EnqueueResult | None]]


def thread_title(question: str) -> str:
    """The first question on one line, cut at a word to ``TITLE_CHARS`` characters."""
    flat = " ".join(question.split())
    if len(flat) <= TITLE_CHARS:
        return flat
    cut = flat[: TITLE_CHARS - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > TITLE_CHARS // 2 else cut) + "…"


def queued_status(position: int) -> str:
    """The status of a question: its place in the queue (``position`` jobs ahead) or thinking."""
    if position > 0:
        return texts.SLACK_ASSISTANT_QUEUED.format(position=position)
    return texts.SLACK_ASSISTANT_THINKING


@dataclass(kw_only=True)
class SlackAssistant:
    """The assistant-thread listeners (``middleware`` is what ``AsyncApp.assistant`` takes)."""

    client: AsyncWebClient
    intake: Callable[[], IntakePort]
    submit: Submit  # the adapter's own handling of a user message (allowlists, intake)
    allowed: Callable[[str, str], bool]
    prompts: Sequence[tuple[str, str]]  # (title, message) suggested in every new thread
    poll_seconds: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _greeted: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    _watchers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def middleware(self) -> AsyncAssistant:
        assistant = AsyncAssistant(logger=logging.getLogger("slack_bolt.assistant"))
        assistant.thread_started(self.on_thread_started)
        assistant.user_message(self.on_user_message)
        assistant.thread_context_changed(self.on_context_changed)
        return assistant

    async def close(self) -> None:
        """Stop the status watchers (the answers go on without them)."""
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    # ------------------------------------------------------------------ listeners

    async def on_thread_started(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        set_suggested_prompts: AsyncSetSuggestedPrompts,
    ) -> None:
        thread = event.get("assistant_thread") or {}
        channel = str(thread.get("channel_id") or "")
        thread_ts = str(thread.get("thread_ts") or "")
        workspace = str(body.get("team_id") or "")
        if not channel or not thread_ts or not self.allowed(workspace, channel):
            return
        key = (channel, thread_ts)
        if key in self._greeted:
            return  # Slack delivered the event again
        self._greeted[key] = None
        if len(self._greeted) > REMEMBERED_THREADS:
            self._greeted.popitem(last=False)
        try:
            await self.client.chat_postMessage(
                channel=channel, thread_ts=thread_ts, markdown_text=texts.SLACK_ASSISTANT_GREETING
            )
            if self.prompts:
                await set_suggested_prompts(
                    prompts=[
                        {"title": title, "message": message} for title, message in self.prompts
                    ],
                    title=texts.SLACK_ASSISTANT_PROMPTS_TITLE,
                )
        except Exception as exc:
            log.warning("could not greet an assistant thread: %s: %s", type(exc).__name__, exc)

    async def on_user_message(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        set_status: AsyncSetStatus,
        set_title: AsyncSetTitle,
    ) -> None:
        result = await self.submit(event, body)
        if result is None or not result.created or result.handoff or result.refused:
            return  # nothing will be answered (or it was answered before)
        try:
            shown = queued_status(await self.intake().queue_position(result.job_id))
        except Exception as exc:
            log.info("could not read the queue position: %s", type(exc).__name__)
            shown = texts.SLACK_ASSISTANT_THINKING
        await self._quietly(set_status(status=shown), "set_status")
        if await self._first_question(result):
            question = str(event.get("text") or "")
            await self._quietly(set_title(thread_title(question)), "set_title")
        channel, thread_ts = str(event.get("channel")), str(event.get("thread_ts"))
        task = asyncio.create_task(self._watch(result.job_id, channel, thread_ts, shown))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def on_context_changed(self, event: dict[str, Any]) -> None:
        thread = event.get("assistant_thread") or {}
        context = thread.get("context") or {}
        log.debug(
            "assistant thread %s now beside channel %s",
            str(thread.get("thread_ts") or "")[:40],
            str(context.get("channel_id") or "")[:40],
        )

    # ------------------------------------------------------------------ status

    async def _first_question(self, result: EnqueueResult) -> bool:
        earlier = await asyncio.to_thread(
            self.intake().repository.history,
            result.conversation_id,
            up_to_message_id=result.message_id,
            limit=2,
        )
        return len(earlier) <= 1

    async def _watch(self, job_id: int, channel: str, thread_ts: str, shown: str) -> None:
        """Keep the thread's status right until the answer starts: the queue position while the
        job waits (updated as it moves up), "is thinking…" while it runs, refreshed before
        Slack's two-minute expiry. Once a reply message exists (Slack cleared the status when
        it was posted) or the job is over, nothing more is set."""
        intake = self.intake()
        shown_at = self.clock()
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                record = await asyncio.to_thread(intake.repository.job, job_id)
                if record is None or record.reply_message_ids:
                    return
                if record.status is JobStatus.QUEUED:
                    wanted = queued_status(await intake.queue_position(job_id))
                elif record.status is JobStatus.RUNNING:
                    wanted = texts.SLACK_ASSISTANT_THINKING
                else:
                    return
            except Exception as exc:
                log.info("could not read job %s for its status: %s", job_id, type(exc).__name__)
                continue
            if wanted != shown or self.clock() - shown_at >= STATUS_REFRESH_SECONDS:
                await self._set_status(channel, thread_ts, wanted)
                shown, shown_at = wanted, self.clock()

    async def _set_status(self, channel: str, thread_ts: str, status: str) -> None:
        await self._quietly(
            self.client.assistant_threads_setStatus(
                channel_id=channel, thread_ts=thread_ts, status=status
            ),
            "set_status",
        )

    @staticmethod
    async def _quietly(request: Awaitable[Any], what: str) -> None:
        try:
            await request
        except Exception as exc:  # a status or title is no reason to lose the answer
            log.info("Slack assistant %s failed: %s: %s", what, type(exc).__name__, exc)
