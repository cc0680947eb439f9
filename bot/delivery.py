"""The ChatAdapter seam: how the core hears from a platform and answers on it.

Adapters translate; the core decides. Ingress turns platform events into ``Incoming`` and hands them
to ``Intake``; egress (``open_reply``/``post_notice``) posts a reply so a worker can deliver with the
platform's REST API alone. Implementations: ``adapters.console.ConsoleAdapter`` and the shipped fake
``adapters.fake.FakeAdapter`` (records posts, injects delivery faults).

Outgoing text hygiene happens here, once, for every platform: the core reaches an adapter's egress
only through ``open_clean_reply`` and ``post_clean_notice``, which pass every text through
``bot.hygiene.clean_outgoing`` before the adapter sees it. Replies (streamed, split, ephemeral,
posted through a response_url or a webhook) and notices therefore get the same cleaning whatever
path the adapter then takes, and no adapter has to remember it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.hygiene import clean_outgoing
from bot.models import ConversationKey

if TYPE_CHECKING:
    from bot.intake import Intake


@dataclass(frozen=True, kw_only=True)
class ReplyTarget:
    """Where a reply goes. ``existing_message_ids`` were posted by an earlier attempt of the same
    job: the adapter continues (edits) them instead of posting a second reply."""

    job_id: int
    conversation: ConversationKey
    reply_target: Mapping[str, str]
    existing_message_ids: tuple[str, ...] = ()


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


@runtime_checkable
class ChatAdapter(Protocol):
    @property
    def platform(self) -> str: ...

    async def start(self, intake: Intake) -> None:
        """Connect and begin delivering incoming messages to ``intake`` (returns once running)."""
        ...

    async def stop(self) -> None: ...

    async def open_reply(self, target: ReplyTarget) -> ReplyStream: ...

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        """A short standalone message in the conversation (apologies, limits)."""
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
