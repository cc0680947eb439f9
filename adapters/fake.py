"""The shipped fake ChatAdapter: an in-memory platform that records every post and edit.

Tests and benchmarks drive the real intake/queue/worker path through it. ``fail_next`` injects
delivery failures (``DeliveryError``, optionally with a Retry-After) into the next posts/edits.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bot.delivery import IntakePort, ReplyTarget
from bot.errors import DeliveryError
from bot.records import ConversationKey, EnqueueResult, Incoming


@dataclass
class PostedMessage:
    id: str
    conversation: ConversationKey
    text: str
    job_id: int
    edits: int = 0
    history: list[str] = field(default_factory=list)


class FakeReplyStream:
    def __init__(self, adapter: FakeAdapter, target: ReplyTarget) -> None:
        self._adapter = adapter
        self._target = target
        self._ids = list(target.existing_message_ids)

    @property
    def message_ids(self) -> Sequence[str]:
        return tuple(self._ids)

    async def update(self, text: str) -> None:
        self._write(text)

    async def finish(self, text: str) -> Sequence[str]:
        self._write(text)
        return tuple(self._ids)

    def _write(self, text: str) -> None:
        self._adapter.check_fault()
        if self._ids:
            self._adapter.edit(self._ids[0], text)
        else:
            self._ids.append(self._adapter.post(self._target, text))


class FakeAdapter:
    def __init__(self, *, platform: str = "fake") -> None:
        self._platform = platform
        self._ids = itertools.count(1)
        self._faults: list[DeliveryError] = []
        self.intake: IntakePort | None = None
        self.messages: dict[str, PostedMessage] = {}
        self.notices: list[tuple[ConversationKey, str]] = []
        self.posts = 0
        self.started = False

    @property
    def platform(self) -> str:
        return self._platform

    async def start(self, intake: IntakePort) -> None:
        self.intake = intake
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def receive(
        self,
        *,
        channel: str,
        text: str,
        message_id: str,
        author_id: str = "user",
        author_name: str = "",
        thread: str = "",
        workspace: str = "",
    ) -> EnqueueResult | None:
        """Simulate the platform delivering a user message to the bot."""
        assert self.intake is not None, "start() the adapter first"
        return await self.intake.submit(
            Incoming(
                platform=self._platform,
                workspace=workspace,
                channel=channel,
                thread=thread,
                author_id=author_id,
                author_name=author_name,
                text=text,
                message_id=message_id,
            )
        )

    def fail_next(self, count: int = 1, *, retry_after: float | None = None) -> None:
        self._faults.extend(
            DeliveryError("injected platform outage", retry_after=retry_after) for _ in range(count)
        )

    def check_fault(self) -> None:
        if self._faults:
            raise self._faults.pop(0)

    def post(self, target: ReplyTarget, text: str) -> str:
        message_id = f"m{next(self._ids)}"
        self.messages[message_id] = PostedMessage(
            id=message_id, conversation=target.conversation, text=text, job_id=target.job_id
        )
        self.messages[message_id].history.append(text)
        self.posts += 1
        return message_id

    def edit(self, message_id: str, text: str) -> None:
        message = self.messages[message_id]
        message.text = text
        message.edits += 1
        message.history.append(text)

    async def open_reply(self, target: ReplyTarget) -> FakeReplyStream:
        return FakeReplyStream(self, target)

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        self.check_fault()
        self.notices.append((target.conversation, text))

    def replies(self, channel: str, *, thread: str = "") -> list[str]:
        """Final texts of the replies posted in a conversation, in posting order."""
        return [
            m.text
            for m in self.messages.values()
            if m.conversation.channel == channel and m.conversation.thread == thread
        ]

    def replies_by_job(self) -> Mapping[int, list[PostedMessage]]:
        grouped: dict[int, list[PostedMessage]] = {}
        for message in self.messages.values():
            grouped.setdefault(message.job_id, []).append(message)
        return grouped
