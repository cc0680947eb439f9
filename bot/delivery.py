"""The ChatAdapter seam: how the core hears from a platform and answers on it.

Adapters translate; the core decides. Ingress turns platform events into ``Incoming`` and hands them
to ``Intake``; egress (``open_reply``/``post_notice``) posts a reply so a worker can deliver with the
platform's REST API alone. Implementations: ``adapters.console.ConsoleAdapter`` and the shipped fake
``adapters.fake.FakeAdapter`` (records posts, injects delivery faults).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
