"""Source links for a Slack question waiting in the queue (issue 14).

When a question is stored behind other jobs in a channel with a knowledge base, its placeholder
shows at once the top documents the search finds for it (``Intake.waiting_help``, the path
Discord's queue placeholder takes): a ``/solar`` question's placeholder (which quotes it) is
edited to hold them; a mention or DM gets a placeholder in its thread. The worker's reply adopts
that placeholder (``adopt``, from ``open_reply``) and the streamed answer replaces it.

The placeholder and the reply take turns on one lock per job: a placeholder is shown only while
the job is still queued behind others and no reply has taken over, so a late placeholder never
overwrites an answer that this process streams. A mention's placeholder that no reply of this
process took over (another process answered, or the job ended without an answer) is deleted once
the job is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_format import to_mrkdwn
from bot import texts
from bot.delivery import IntakePort, ReplyTarget
from bot.records import EnqueueResult, Incoming, JobStatus

log = logging.getLogger(__name__)

FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)
STATUS_POLL_SECONDS = 1.0  # how often an unadopted mention placeholder checks its job


@dataclass
class _Waiting:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    adopted: bool = False
    ts: str = ""  # a mention's placeholder (a /solar one is in the reply target already)


class WaitingLinks:
    """The queued questions of one Slack adapter that may get source links (see the module)."""

    def __init__(self, client: AsyncWebClient, *, status_poll: float = STATUS_POLL_SECONDS):
        self._client = client
        self._status_poll = status_poll
        self._waiting: dict[int, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def queued(
        self, intake: IntakePort | None, incoming: Incoming, result: EnqueueResult | None
    ) -> None:
        """``incoming`` was just stored as ``result``: show it its links in the background (an
        event's acknowledgement does not wait for the search)."""
        if intake is None or result is None or not result.created or result.refused:
            return
        if result.handoff:
            return
        if incoming.reply_target.get("ephemeral") == "1":
            return  # a --private answer has no placeholder
        entry = _Waiting()
        self._waiting[result.job_id] = entry
        task = asyncio.create_task(self._show(intake, result.job_id, incoming, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def adopt(self, target: ReplyTarget) -> ReplyTarget:
        """The reply to ``target`` takes over: no placeholder is shown for it from now on, and a
        mention's placeholder becomes the reply's first message."""
        entry = self._waiting.pop(target.job_id, None)
        if entry is None:
            return target
        async with entry.lock:
            entry.adopted = True
            if entry.ts and not target.existing_message_ids:
                return dataclasses.replace(target, existing_message_ids=(entry.ts,))
        return target

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()

    async def _show(
        self, intake: IntakePort, job_id: int, incoming: Incoming, entry: _Waiting
    ) -> None:
        where = incoming.reply_target
        try:
            links = await intake.waiting_help(incoming)
            async with entry.lock:
                if not links or entry.adopted or not await _waits(intake, job_id):
                    return
                body = f"{texts.SLACK_THINKING}\n{to_mrkdwn(links)}"
                if where.get("ts"):  # /solar: its placeholder quotes the question
                    await self._client.chat_update(
                        channel=where["channel"],
                        ts=where["ts"],
                        text=f"{where.get('header', '')}\n\n{body}",
                    )
                    return
                posted = await self._client.chat_postMessage(
                    channel=where["channel"],
                    thread_ts=where.get("thread_ts") or None,
                    text=body,
                    unfurl_links=False,
                    unfurl_media=False,
                )
                entry.ts = str(posted["ts"])
            await self._until_answered(intake, job_id, entry, channel=where["channel"])
        except Exception as exc:  # the question waits all the same
            log.warning("slack: job %s: no source links while queued: %s", job_id, exc)
        finally:
            if self._waiting.get(job_id) is entry and not entry.ts:
                del self._waiting[job_id]

    async def _until_answered(
        self, intake: IntakePort, job_id: int, entry: _Waiting, *, channel: str
    ) -> None:
        while not entry.adopted:
            await asyncio.sleep(self._status_poll)
            status = await intake.job_status(job_id)
            if status is None or status in FINISHED:
                async with entry.lock:
                    if entry.adopted:
                        return
                    self._waiting.pop(job_id, None)
                    with contextlib.suppress(SlackApiError):  # already gone
                        await self._client.chat_delete(channel=channel, ts=entry.ts)
                return


async def _waits(intake: IntakePort, job_id: int) -> bool:
    """The job is still queued, behind other jobs."""
    if await intake.job_status(job_id) is not JobStatus.QUEUED:
        return False
    return await intake.queue_position(job_id) > 0
