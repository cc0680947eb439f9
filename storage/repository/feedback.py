"""👍/👎 on bot replies: storing and removing a person's rating, and the feedback report."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Text, case, delete, func, select
from sqlalchemy import cast as sql_cast

from bot.records import (
    AnswerRecord,
    ChannelFeedback,
    ConversationKey,
    DownvotedDocument,
    FeedbackRecord,
    FeedbackReport,
    JobStatus,
    RatedReply,
    Rating,
    Role,
)
from storage.repository.base import RepositoryBase, upsert
from storage.repository.tables import (
    conversations,
    feedback,
    job_chunks,
    jobs,
    kb_chunks,
    kb_collections,
    kb_documents,
    messages,
)
from storage.schema import utcnow

EXCERPT_CHARS = 120  # of a question and an answer in the feedback report


class FeedbackStore(RepositoryBase):
    def add_feedback(
        self,
        *,
        platform: str,
        workspace: str,
        message_id: str,
        user_id: str,
        rating: Rating,
        channel: str | None = None,
        now: datetime | None = None,
    ) -> int | None:
        """Store a person's 👍/👎 on the bot reply posted as ``message_id`` (any part of it).
        Returns the reply's job id, or None when ``message_id`` is not a bot reply (nothing
        stored). One rating per person and reply: a different rating replaces theirs (the latest
        wins); the same one again changes nothing (a redelivered event).
        ``channel`` narrows the search where message ids are unique only per channel (Slack)."""
        with self._transaction() as connection:
            job_id = reply_job(connection, platform, workspace, channel, message_id)
            if job_id is None:
                return None
            statement = upsert(connection, feedback).values(
                job_id=job_id,
                user_id=user_id,
                rating=rating,
                platform_message_id=message_id,
                created_at=now or utcnow(),
            )
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["job_id", "user_id"],
                    set_={
                        "rating": statement.excluded.rating,
                        "platform_message_id": statement.excluded.platform_message_id,
                        "created_at": statement.excluded.created_at,
                    },
                    where=feedback.c.rating != statement.excluded.rating,
                )
            )
            return job_id

    def remove_feedback(
        self,
        *,
        platform: str,
        workspace: str,
        message_id: str,
        user_id: str,
        rating: Rating,
        channel: str | None = None,
    ) -> int | None:
        """The person took their ``rating`` reaction back: delete their rating if it is that one
        (a 👍 removed after a 👎 replaced it leaves the 👎). The job id, or None."""
        with self._transaction() as connection:
            job_id = reply_job(connection, platform, workspace, channel, message_id)
            if job_id is None:
                return None
            connection.execute(
                delete(feedback).where(
                    feedback.c.job_id == job_id,
                    feedback.c.user_id == user_id,
                    feedback.c.rating == rating,
                )
            )
            return job_id

    def answer_of(self, job_id: int) -> AnswerRecord | None:
        """The reply of job ``job_id`` (its conversation, the asker, the messages holding it so
        far), for buttons under it; None when there is no such job."""
        with self._transaction() as connection:
            return _answer(connection, job_id)

    def reply_origin(
        self, *, platform: str, workspace: str, message_id: str, channel: str | None = None
    ) -> AnswerRecord | None:
        """What the bot reply posted as ``message_id`` (any part of it) answers: its job, the
        conversation and who asked (a button under the reply identifies it by its message, so
        a client never names a job). None when ``message_id`` is not a finished bot reply."""
        with self._transaction() as connection:
            job_id = reply_job(connection, platform, workspace, channel, message_id)
            return None if job_id is None else _answer(connection, job_id)

    def feedback_for(self, job_id: int) -> list[FeedbackRecord]:
        with self._transaction() as connection:
            rows = connection.execute(
                select(feedback).where(feedback.c.job_id == job_id).order_by(feedback.c.id)
            ).all()
        return [
            FeedbackRecord(
                job_id=row.job_id,
                user_id=row.user_id,
                rating=Rating(row.rating),
                platform_message_id=row.platform_message_id,
                created_at=row.created_at,
            )
            for row in rows
        ]

    def feedback_counts(self) -> dict[Rating, int]:
        """How many 👍 and 👎 are stored (the metrics read it on every scrape)."""
        query = select(feedback.c.rating, func.count(feedback.c.id)).group_by(feedback.c.rating)
        with self._transaction() as connection:
            return {Rating(rating): int(count) for rating, count in connection.execute(query)}

    def downvoted_documents(
        self, *, platform: str | None = None, limit: int = 10
    ) -> list[DownvotedDocument]:
        """The knowledge-base documents whose passages were given to the most 👎-rated replies
        (``job_chunks``), most first (ties: more 👎, then by title). Documents removed since are
        left out."""
        where = [] if platform is None else [conversations.c.platform == platform]
        downs = (
            select(feedback.c.job_id, func.count().label("down"))
            .where(feedback.c.rating == Rating.DOWN)
            .group_by(feedback.c.job_id)
            .subquery()
        )
        # Each (reply, document) once, however many of its chunks the reply was given.
        pairs = (
            select(downs.c.job_id, downs.c.down, kb_chunks.c.document_id)
            .select_from(downs)
            .join(job_chunks, job_chunks.c.job_id == downs.c.job_id)
            .join(kb_chunks, kb_chunks.c.id == job_chunks.c.chunk_id)
            .join(jobs, jobs.c.id == downs.c.job_id)
            .join(conversations, conversations.c.id == jobs.c.conversation_id)
            .where(*where)
            .distinct()
            .subquery()
        )
        replies = func.count(pairs.c.job_id)
        down = func.sum(pairs.c.down)
        query = (
            select(kb_collections.c.name, kb_documents.c.title, kb_documents.c.link, replies, down)
            .select_from(pairs)
            .join(kb_documents, kb_documents.c.id == pairs.c.document_id)
            .join(kb_collections, kb_collections.c.id == kb_documents.c.collection_id)
            .group_by(
                kb_documents.c.id, kb_collections.c.name, kb_documents.c.title, kb_documents.c.link
            )
            .order_by(replies.desc(), down.desc(), kb_documents.c.title, kb_documents.c.id)
            .limit(max(limit, 0))
        )
        with self._transaction() as connection:
            return [
                DownvotedDocument(
                    collection=row[0],
                    title=row[1],
                    link=row[2],
                    replies=int(row[3]),
                    down=int(row[4] or 0),
                )
                for row in connection.execute(query)
            ]

    def feedback_report(self, *, platform: str | None = None, limit: int = 10) -> FeedbackReport:
        """Per channel (threads included): replies (done jobs), 👍 and 👎; and the ``limit``
        replies with the most 👎 (ties: fewer 👍, then the newest), with their question."""
        where = [] if platform is None else [conversations.c.platform == platform]
        channel_key = (conversations.c.platform, conversations.c.workspace, conversations.c.channel)
        up = func.sum(case((feedback.c.rating == Rating.UP, 1), else_=0))
        down = func.sum(case((feedback.c.rating == Rating.DOWN, 1), else_=0))
        with self._transaction() as connection:
            replies = connection.execute(
                select(*channel_key, func.count(jobs.c.id))
                .join(conversations, conversations.c.id == jobs.c.conversation_id)
                .where(jobs.c.status == JobStatus.DONE, *where)
                .group_by(*channel_key)
            ).all()
            votes = connection.execute(
                select(*channel_key, up, down)
                .select_from(feedback)
                .join(jobs, jobs.c.id == feedback.c.job_id)
                .join(conversations, conversations.c.id == jobs.c.conversation_id)
                .where(*where)
                .group_by(*channel_key)
            ).all()
            worst = connection.execute(
                select(
                    jobs.c.id,
                    *channel_key,
                    jobs.c.reply_text,
                    messages.c.text,
                    up.label("up"),
                    down.label("down"),
                )
                .select_from(feedback)
                .join(jobs, jobs.c.id == feedback.c.job_id)
                .join(conversations, conversations.c.id == jobs.c.conversation_id)
                .join(messages, messages.c.id == jobs.c.message_id)
                .where(*where)
                .group_by(jobs.c.id, *channel_key, jobs.c.reply_text, messages.c.text)
                .having(down > 0)
                .order_by(down.desc(), up, jobs.c.id.desc())
                .limit(max(limit, 0))
            ).all()
        counts: dict[tuple[str, str, str], list[int]] = {}
        for row in replies:
            counts[(row[0], row[1], row[2])] = [int(row[3]), 0, 0]
        for row in votes:
            entry = counts.setdefault((row[0], row[1], row[2]), [0, 0, 0])
            entry[1], entry[2] = int(row[3] or 0), int(row[4] or 0)
        channels = tuple(
            ChannelFeedback(
                platform=key[0],
                workspace=key[1],
                channel=key[2],
                replies=value[0],
                up=value[1],
                down=value[2],
            )
            for key, value in sorted(counts.items())
        )
        rated = tuple(
            RatedReply(
                job_id=row.id,
                platform=row.platform,
                workspace=row.workspace,
                channel=row.channel,
                up=int(row.up or 0),
                down=int(row.down or 0),
                question=excerpt(row.text or ""),
                answer=excerpt(row.reply_text or ""),
            )
            for row in worst
        )
        return FeedbackReport(channels=channels, worst=rated)


def reply_job(
    connection: Connection, platform: str, workspace: str, channel: str | None, message_id: str
) -> int | None:
    """The job whose reply was posted as ``message_id``: its first message (indexed, through the
    assistant turn) or, failing that, a follow-up part (``jobs.reply_message_ids``)."""
    where = [conversations.c.platform == platform, conversations.c.workspace == workspace]
    if channel is not None:
        where.append(conversations.c.channel == channel)
    found = connection.scalar(
        select(jobs.c.id)
        .select_from(messages)
        .join(jobs, jobs.c.message_id == messages.c.reply_to_id)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .where(
            messages.c.platform_message_id == message_id,
            messages.c.role == Role.ASSISTANT,
            *where,
        )
        .limit(1)
    )
    if found is not None:
        return int(found)
    candidates = connection.execute(
        select(jobs.c.id, jobs.c.reply_message_ids)
        .join(conversations, conversations.c.id == jobs.c.conversation_id)
        .where(
            jobs.c.status == JobStatus.DONE,
            sql_cast(jobs.c.reply_message_ids, Text).contains(f'"{message_id}"', autoescape=True),
            *where,
        )
        .order_by(jobs.c.id.desc())
    ).all()
    for row in candidates:
        if message_id in (row.reply_message_ids or ()):
            return int(row.id)
    return None


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def _answer(connection: Connection, job_id: int) -> AnswerRecord | None:
    row = connection.execute(
        select(
            jobs.c.reply_message_ids,
            jobs.c.reply_target,
            messages.c.author_id,
            conversations.c.platform,
            conversations.c.workspace,
            conversations.c.channel,
            conversations.c.thread,
        )
        .join(messages, messages.c.id == jobs.c.message_id)
        .join(conversations, conversations.c.id == jobs.c.conversation_id)
        .where(jobs.c.id == job_id)
    ).first()
    if row is None:
        return None
    return AnswerRecord(
        job_id=job_id,
        conversation=ConversationKey(
            platform=row.platform,
            workspace=row.workspace,
            channel=row.channel,
            thread=row.thread,
        ),
        asker_id=row.author_id,
        message_ids=tuple(str(i) for i in row.reply_message_ids or ()),
        reply_target=dict(row.reply_target or {}),
    )
