"""Auto-answer channels (``bot.auto_answer``): what the core reads about a message that was not
addressed to the bot, in one transaction."""

from __future__ import annotations

from sqlalchemy import select, update

from bot.records import ConversationKey, JobStatus, Role, ThreadState
from storage.repository.base import RepositoryBase
from storage.repository.channels import answer_mode_of
from storage.repository.jobs import HANDOFF_ERROR
from storage.repository.tables import (
    channel_settings,
    conversations,
    jobs,
    key_filter,
    messages,
    settings_filter,
)
from storage.schema import utcnow


class AutoThreadStore(RepositoryBase):
    def thread_state(self, key: ConversationKey) -> ThreadState:
        """The mode and switch of ``key``'s channel, who asked first in the conversation ``key``
        (its oldest user turn; "" when none is stored) and whether it is handed to a human."""
        with self._transaction() as connection:
            settings = connection.execute(
                select(channel_settings.c.answer_mode, channel_settings.c.enabled).where(
                    *settings_filter(key.platform, key.workspace, key.channel)
                )
            ).first()
            conversation = connection.execute(
                select(conversations.c.id, conversations.c.handoff_at).where(*key_filter(key))
            ).first()
            asker = None
            if conversation is not None:
                asker = connection.scalar(
                    select(messages.c.author_id)
                    .where(
                        messages.c.conversation_id == conversation.id,
                        messages.c.role == Role.USER,
                    )
                    .order_by(messages.c.id)
                    .limit(1)
                )
        return ThreadState(
            answer_mode=answer_mode_of(settings.answer_mode if settings is not None else None),
            enabled=settings is None or settings.enabled is not False,
            asker=str(asker or ""),
            handed_off=conversation is not None and conversation.handoff_at is not None,
        )

    def cancel_waiting_jobs(self, key: ConversationKey) -> int:
        """Cancel the jobs of the conversation ``key`` that no worker has tried yet (handed to a
        human: the questions waiting there are not answered); returns how many. A job being
        answered, or retried after a part of its reply was posted, is left to finish."""
        moment = utcnow()
        in_conversation = select(conversations.c.id).where(*key_filter(key)).scalar_subquery()
        with self._transaction() as connection:
            result = connection.execute(
                update(jobs)
                .where(
                    jobs.c.conversation_id == in_conversation,
                    jobs.c.status == JobStatus.QUEUED,
                    jobs.c.attempts == 0,
                )
                .values(
                    status=JobStatus.CANCELLED,
                    finished_at=moment,
                    updated_at=moment,
                    error=HANDOFF_ERROR,
                )
            )
            return int(result.rowcount)
