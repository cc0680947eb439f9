"""The repository: the only code that issues queries, one module per topic.

- ``jobs``: the job queue and its rules (enqueue, claim, fenced leases, completion).
- ``conversations``: conversations, their turns and history, transcripts, ``forget``.
- ``feedback``: 👍/👎 on replies and the feedback report.
- ``channels``: per-channel settings and human handoff.
- ``knowledge``: knowledge-base collections, documents, chunks and their full-text search.
- ``followups``: support pings held outside support hours and reminders about handoffs.
- ``auto_threads``: what decides whether a message nobody addressed to the bot is answered.
- ``usage``: what replies cost in tokens, per user and channel (the daily quota, `solarbot usage`).

``Repository`` is all of them on one engine. Its methods are synchronous and short (the asyncio
side calls them through ``asyncio.to_thread``), and every public method is one transaction.
"""

from __future__ import annotations

from storage import database
from storage.repository.auto_threads import AutoThreadStore
from storage.repository.channels import ChannelStore
from storage.repository.conversations import ConversationStore
from storage.repository.feedback import FeedbackStore
from storage.repository.followups import FollowupStore
from storage.repository.jobs import JobQueue
from storage.repository.knowledge import KnowledgeStore
from storage.repository.usage import UsageStore

__all__ = ["Repository"]


class Repository(
    JobQueue,
    ConversationStore,
    FeedbackStore,
    ChannelStore,
    KnowledgeStore,
    UsageStore,
    FollowupStore,
    AutoThreadStore,
):
    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Repository:
        engine = database.create_db_engine(url)
        if migrate:
            database.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise unless the database answers (readiness checks)."""
        with self._transaction() as connection:
            connection.exec_driver_sql("SELECT 1")
