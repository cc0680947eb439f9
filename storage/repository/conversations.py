"""Conversations and their turns: finding or creating a conversation, history in reply order,
transcripts, and deletion (``forget`` a channel or a person)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select

from bot.records import Attachment, AttachmentProblem, ConversationKey, Role, StoredMessage
from storage.repository.base import RepositoryBase, upsert
from storage.repository.tables import (
    conversations,
    feedback,
    in_channel,
    jobs,
    key_filter,
    message_attachments,
    messages,
)


class ConversationStore(RepositoryBase):
    def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation up to and including a message, oldest first."""
        with self._transaction() as connection:
            return read_history(connection, conversation_id, up_to_message_id, limit)

    def conversation_id(self, key: ConversationKey) -> int | None:
        with self._transaction() as connection:
            found = connection.scalar(select(conversations.c.id).where(*key_filter(key)))
        return None if found is None else int(found)

    def messages(self, key: ConversationKey) -> list[StoredMessage]:
        with self._transaction() as connection:
            rows = connection.execute(
                select(messages)
                .join(conversations, conversations.c.id == messages.c.conversation_id)
                .where(*key_filter(key))
                .order_by(func.coalesce(messages.c.reply_to_id, messages.c.id), messages.c.id)
            ).all()
            return with_attachments(connection, [stored_message(row) for row in rows])

    def workspaces_of_channel(self, *, platform: str, channel: str) -> list[str]:
        """The workspaces in which ``channel`` of ``platform`` has stored conversations, sorted
        (channel ids are unique per platform on Discord and Slack, so normally one)."""
        with self._transaction() as connection:
            rows = connection.execute(
                select(conversations.c.workspace)
                .where(conversations.c.platform == platform, conversations.c.channel == channel)
                .distinct()
                .order_by(conversations.c.workspace)
            ).all()
        return [str(row.workspace) for row in rows]

    def transcript(
        self, *, platform: str, workspace: str, channel: str
    ) -> list[tuple[ConversationKey, StoredMessage]]:
        """Every stored turn of a channel and its threads: conversation by conversation, each in
        history order (a reply right after its question)."""
        with self._transaction() as connection:
            rows = connection.execute(
                select(
                    messages,
                    conversations.c.platform.label("c_platform"),
                    conversations.c.workspace.label("c_workspace"),
                    conversations.c.channel.label("c_channel"),
                    conversations.c.thread.label("c_thread"),
                )
                .join(conversations, conversations.c.id == messages.c.conversation_id)
                .where(*in_channel(platform, workspace, channel))
                .order_by(
                    conversations.c.thread,
                    func.coalesce(messages.c.reply_to_id, messages.c.id),
                    messages.c.id,
                )
            ).all()
            stored = with_attachments(connection, [stored_message(row) for row in rows])
        return [
            (
                ConversationKey(
                    platform=row.c_platform,
                    workspace=row.c_workspace,
                    channel=row.c_channel,
                    thread=row.c_thread,
                ),
                message,
            )
            for row, message in zip(rows, stored, strict=True)
        ]

    def forget_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Delete every stored turn of a channel and its threads (jobs too); returns messages deleted.

        Jobs still queued or running for the channel go too, so no reply lands afterwards."""
        with self._transaction() as connection:
            conversation_ids = list(
                connection.scalars(
                    select(conversations.c.id).where(*in_channel(platform, workspace, channel))
                )
            )
            if not conversation_ids:
                return 0
            in_conversations = messages.c.conversation_id.in_(conversation_ids)
            deleted = connection.scalar(select(func.count(messages.c.id)).where(in_conversations))
            connection.execute(
                delete(feedback).where(
                    feedback.c.job_id.in_(
                        select(jobs.c.id).where(jobs.c.conversation_id.in_(conversation_ids))
                    )
                )
            )
            connection.execute(delete(jobs).where(jobs.c.conversation_id.in_(conversation_ids)))
            connection.execute(
                delete(messages).where(in_conversations, messages.c.reply_to_id.is_not(None))
            )
            connection.execute(delete(messages).where(in_conversations))
            connection.execute(
                delete(conversations).where(conversations.c.id.in_(conversation_ids))
            )
            return int(deleted or 0)

    def forget_user(self, *, platform: str, workspace: str | None, author_id: str) -> int:
        """Delete everything a person said (their turns, the replies to them and the jobs for
        them) on a platform, in one workspace or (``workspace=None``) all; returns the number of
        their messages deleted. Jobs still pending for them go too, so no reply lands afterwards."""
        with self._transaction() as connection:
            where = [conversations.c.platform == platform]
            if workspace is not None:
                where.append(conversations.c.workspace == workspace)
            in_scope = select(conversations.c.id).where(*where)
            theirs = list(
                connection.scalars(
                    select(messages.c.id).where(
                        messages.c.role == Role.USER,
                        messages.c.author_id == author_id,
                        messages.c.conversation_id.in_(in_scope),
                    )
                )
            )
            # Their reactions too (who reacted is personal data), on replies in scope.
            in_scope_jobs = select(jobs.c.id).where(jobs.c.conversation_id.in_(in_scope))
            connection.execute(
                delete(feedback).where(
                    feedback.c.user_id == author_id, feedback.c.job_id.in_(in_scope_jobs)
                )
            )
            for start in range(0, len(theirs), 500):
                batch = theirs[start : start + 500]
                connection.execute(
                    delete(feedback).where(
                        feedback.c.job_id.in_(select(jobs.c.id).where(jobs.c.message_id.in_(batch)))
                    )
                )
                connection.execute(delete(jobs).where(jobs.c.message_id.in_(batch)))
                connection.execute(delete(messages).where(messages.c.reply_to_id.in_(batch)))
                connection.execute(delete(messages).where(messages.c.id.in_(batch)))
            return len(theirs)


def conversation_id_for(connection: Connection, key: ConversationKey, now: datetime) -> int:
    """The id of the conversation with ``key``, created if new (safe against a concurrent insert
    of the same conversation by another process)."""
    found = connection.scalar(select(conversations.c.id).where(*key_filter(key)))
    if found is not None:
        return int(found)
    connection.execute(
        upsert(connection, conversations)
        .values(
            platform=key.platform,
            workspace=key.workspace,
            channel=key.channel,
            thread=key.thread,
            created_at=now,
        )
        .on_conflict_do_nothing()
    )
    return int(connection.execute(select(conversations.c.id).where(*key_filter(key))).scalar_one())


def read_history(
    connection: Connection, conversation_id: int, up_to_message_id: int, limit: int
) -> list[StoredMessage]:
    """The newest ``limit`` turns of a conversation up to a message, oldest first."""
    # A reply sits right after the question it answers (see Message.reply_to_id).
    anchor = func.coalesce(messages.c.reply_to_id, messages.c.id)
    rows = connection.execute(
        select(messages)
        .where(
            messages.c.conversation_id == conversation_id,
            or_(
                and_(messages.c.reply_to_id.is_(None), messages.c.id <= up_to_message_id),
                messages.c.reply_to_id < up_to_message_id,
            ),
        )
        .order_by(anchor.desc(), messages.c.id.desc())
        .limit(limit)
    ).all()
    return with_attachments(connection, [stored_message(row) for row in reversed(rows)])


def stored_message(row: Row[Any]) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        role=Role(row.role),
        text=row.text,
        author_id=row.author_id,
        author_name=row.author_name,
        platform_message_id=row.platform_message_id,
        token_count=row.token_count,
        created_at=row.created_at,
    )


def store_attachments(
    connection: Connection, message_id: int, attachments: Sequence[Attachment]
) -> None:
    """Store the files attached to message ``message_id``, in their order."""
    if not attachments:
        return
    connection.execute(
        insert(message_attachments),
        [
            {
                "message_id": message_id,
                "position": position,
                "name": attachment.name,
                "media_type": attachment.media_type,
                "size_bytes": attachment.size,
                "text": attachment.text,
                "problem": attachment.problem.value if attachment.problem is not None else None,
            }
            for position, attachment in enumerate(attachments)
        ],
    )


def with_attachments(connection: Connection, stored: list[StoredMessage]) -> list[StoredMessage]:
    """``stored`` with the files attached to each message (one query per 500 messages)."""
    found: dict[int, list[Attachment]] = {}
    ids = [message.id for message in stored if message.role is Role.USER]
    for start in range(0, len(ids), 500):
        rows = connection.execute(
            select(message_attachments)
            .where(message_attachments.c.message_id.in_(ids[start : start + 500]))
            .order_by(message_attachments.c.message_id, message_attachments.c.position)
        ).all()
        for row in rows:
            found.setdefault(int(row.message_id), []).append(_attachment(row))
    if not found:
        return stored
    return [
        dataclasses.replace(message, attachments=tuple(found[message.id]))
        if message.id in found
        else message
        for message in stored
    ]


def _attachment(row: Row[Any]) -> Attachment:
    return Attachment(
        name=row.name,
        media_type=row.media_type,
        size=int(row.size_bytes),
        text=row.text,
        problem=AttachmentProblem(row.problem) if row.problem else None,
    )
