"""The ChatAdapter seam: everything a platform adapter implements and everything it may call.

Adapters translate; the core decides. Ingress turns platform events into ``Incoming`` and hands them
to the core through ``IntakePort`` (what ``bot.intake.Intake`` offers adapters, and nothing more);
egress (``open_reply``/``post_notice``) posts a reply so a worker can deliver with the platform's REST
API alone. Failures to deliver are ``DeliveryError`` (``bot.errors``; its optional ``kind`` labels the
delivery-error metric).

What an adapter implements:

- ``ChatAdapter`` (required): ``platform``, ``start(intake)``, ``stop()``, ``open_reply`` returning a
  ``ReplyStream``, ``post_notice``;
- ``ReportsConnection`` (optional): a ``connected`` property, read by ``/readyz``;
- ``HandoffNotifier`` (optional): ``post_handoff``, announcing that someone asked for a human, and
  ``ping_support``, pinging the support group later (held pings, reminders).
  Only platforms whose adapter has it hand conversations to humans.

Implementations: ``adapters.discord``, ``adapters.slack``, ``adapters.webhook``,
``adapters.console`` and the shipped fake ``adapters.fake.FakeAdapter`` (records posts, injects
delivery faults). This module imports no adapter and not ``bot.intake``: both depend on it.

Outgoing text hygiene happens here, once, for every platform: the core reaches an adapter's egress
only through ``open_clean_reply`` and ``post_clean_notice``, which pass every text through
``bot.hygiene.clean_outgoing`` before the adapter sees it. Replies (streamed, split, ephemeral,
posted through a response_url or a webhook) and notices therefore get the same cleaning whatever
path the adapter then takes, and no adapter has to remember it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.auto_answer import Route
from bot.errors import DeliveryError
from bot.hygiene import clean_outgoing
from bot.learning import ChatMessage
from bot.limits import Refusal
from bot.prompt_room import PromptGauge
from bot.records import ConversationKey, EnqueueResult, Incoming, JobStatus
from storage.repository import Repository

__all__ = [
    "NOTICE_TO",
    "ChatAdapter",
    "CleanReply",
    "DeliveryError",
    "HandoffNotifier",
    "IntakePort",
    "ReplyStream",
    "ReplyTarget",
    "ReportsConnection",
    "open_clean_reply",
    "post_clean_notice",
]


# A ``reply_target`` key: the notice is for this user only (a refusal at intake). Platforms with
# private messages (Slack: ephemeral) tell only that user; the others post it without quoting.
NOTICE_TO = "notice_to"


@dataclass(frozen=True, kw_only=True)
class ReplyTarget:
    """Where a reply goes. ``existing_message_ids`` were posted by an earlier attempt of the same
    job: the adapter continues (edits) them instead of posting a second reply."""

    job_id: int
    conversation: ConversationKey
    reply_target: Mapping[str, str]
    existing_message_ids: tuple[str, ...] = ()
    # The job's key (``ClaimedJob.job_key``): unique forever, the same in every attempt. Adapters
    # build idempotency keys and nonces from it; without one (a notice outside any job) they use
    # a one-off random key.
    job_key: str = ""


@runtime_checkable
class ReplyStream(Protocol):
    """One reply being streamed to a platform. Methods raise ``DeliveryError`` on failure."""

    @property
    def message_ids(self) -> Sequence[str]:
        """Platform ids of the messages posted so far for this reply (first = the reply)."""
        ...

    async def update(self, text: str) -> None:
        """The whole reply so far. Adapters may skip updates to respect platform rate limits."""
        ...

    async def finish(self, text: str) -> Sequence[str]:
        """The complete reply; returns the ids of every message that now holds it."""
        ...


class IntakePort(Protocol):
    """What an adapter may call on the core (``bot.intake.Intake`` implements it)."""

    async def submit(self, incoming: Incoming) -> EnqueueResult | None:
        """Store and enqueue a user message (a redelivered one is a no-op returning the same
        job). None when its channel is switched off; ``refused`` set when a limit refused it."""
        ...

    async def reaction(
        self,
        *,
        platform: str,
        workspace: str,
        message_id: str,
        user_id: str,
        emoji: str,
        added: bool,
        channel: str | None = None,
    ) -> int | None:
        """A reaction added to or removed from ``message_id`` (👍/👎 on a reply is feedback)."""
        ...

    async def unaddressed(self, message: Incoming, *, top_level: bool) -> Route:
        """A person's channel message that does not mention the bot (``top_level``: not in a
        thread): answer it (``QUESTION``), it handed its thread to a human, or nothing to do
        (``bot.auto_answer``). Adapters filter bots, their own, edits and system messages."""
        ...

    async def learn(self, message: ChatMessage, *, added: bool) -> str | None:
        """An admin's 📚 added to (removed from) ``message``: it joins (leaves) the channel's
        knowledge base. Returns the collection, None when nothing changed."""
        ...

    async def waiting_help(self, incoming: Incoming) -> str:
        """Links to the channel's top knowledge-base documents for a queued question, for its
        placeholder ("" when there are none)."""
        ...

    async def queue_position(self, job_id: int) -> int:
        """How many jobs are ahead of ``job_id`` in the queue (0: it is next or running)."""
        ...

    async def job_status(self, job_id: int) -> JobStatus | None:
        """Where ``job_id`` stands (None: no such job)."""
        ...

    def ingress_failed(self, platform: str, reason: str) -> None:
        """The adapter can no longer receive messages, for good: the service stops with an error."""
        ...

    @property
    def repository(self) -> Repository:
        """The store, for the chat sub-commands (``bot.commands.Commands``) only."""
        ...

    async def admit_command(
        self, *, platform: str, workspace: str, channel: str, author_id: str
    ) -> Refusal | None:
        """Chat sub-commands and hints pass the rate limits too: None = go ahead; else the
        refusal (``quiet``: this user was told already within the window, say nothing)."""
        ...

    @property
    def prompt_gauge(self) -> PromptGauge:
        """Measures a channel prompt in the model's tokens, for the ``prompt`` sub-command."""
        ...


@runtime_checkable
class ChatAdapter(Protocol):
    @property
    def platform(self) -> str: ...

    async def start(self, intake: IntakePort) -> None:
        """Connect and begin delivering incoming messages to ``intake`` (returns once running)."""
        ...

    async def stop(self) -> None: ...

    async def open_reply(self, target: ReplyTarget) -> ReplyStream: ...

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        """A short standalone message in the conversation (apologies, limits)."""
        ...


@runtime_checkable
class ReportsConnection(Protocol):
    """An adapter that can tell whether its platform connection is up (``/readyz``)."""

    @property
    def connected(self) -> bool: ...


@runtime_checkable
class HandoffNotifier(Protocol):
    """An adapter that announces a handoff itself (pinging its platform's support group/role)."""

    async def post_handoff(self, target: ReplyTarget) -> None: ...

    async def ping_support(self, target: ReplyTarget, text: str) -> None:
        """Post ``text`` (Markdown) in the handed-off conversation, pinging the support
        group/role: a ping held back outside support hours, or a reminder
        (``bot.handoff_followups``)."""
        ...


class CleanReply:
    """A ``ReplyStream`` that hands the adapter's stream only cleaned text (``clean_outgoing``).

    Cleaning is character by character, so a growing reply stays a growing cleaned reply."""

    def __init__(self, inner: ReplyStream) -> None:
        self.inner = inner

    @property
    def message_ids(self) -> Sequence[str]:
        return self.inner.message_ids

    async def update(self, text: str) -> None:
        await self.inner.update(clean_outgoing(text))

    async def finish(self, text: str) -> Sequence[str]:
        return await self.inner.finish(clean_outgoing(text))


async def open_clean_reply(adapter: ChatAdapter, target: ReplyTarget) -> CleanReply:
    """``adapter.open_reply(target)``, wrapped so that only cleaned text reaches the platform."""
    return CleanReply(await adapter.open_reply(target))


async def post_clean_notice(adapter: ChatAdapter, target: ReplyTarget, text: str) -> None:
    """``adapter.post_notice`` with the text cleaned (``clean_outgoing``)."""
    await adapter.post_notice(target, clean_outgoing(text))
