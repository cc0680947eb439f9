"""The repository: the only module that issues queries.

All methods are synchronous and short; the asyncio side calls them through ``asyncio.to_thread``.
Every public method is one transaction. Jobs are fenced by (worker_id, attempts): a worker whose
lease expired and whose job was reclaimed can no longer change that job.

Queries use SQLAlchemy Core on the tables behind the ORM models (``storage.schema``): the hot
paths (enqueue, claim, progress, complete) run once or more per chat message, and Core avoids
the ORM's per-statement bookkeeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    Text,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from bot.models import (
    ChannelConfig,
    ChannelFeedback,
    ClaimedJob,
    ConversationKey,
    EnqueueResult,
    FeedbackRecord,
    FeedbackReport,
    Incoming,
    JobRecord,
    JobStatus,
    JobTrace,
    RatedReply,
    Rating,
    Role,
    StoredMessage,
)
from storage import database
from storage.schema import ChannelSettings, Conversation, Feedback, Job, Message, utcnow

PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)
CHANNEL_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(ChannelConfig))

conversations = cast(Table, Conversation.__table__)
messages = cast(Table, Message.__table__)
jobs = cast(Table, Job.__table__)
channel_settings = cast(Table, ChannelSettings.__table__)
feedback = cast(Table, Feedback.__table__)
HANDOFF_ERROR = "handed to a human (no reply)"
EXCERPT_CHARS = 120  # of a question and an answer in the feedback report


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite allows one writer at a time and every transaction here begins IMMEDIATE. Threads of
        # this process take turns on a Python lock instead of colliding in SQLite's busy handler,
        # which sleeps in steps of up to 100 ms; other processes still wait on busy_timeout.
        self._local_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Repository:
        engine = database.create_db_engine(url)
        if migrate:
            database.upgrade(engine)
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._local_lock, self.engine.begin() as connection:
            yield connection

    # ------------------------------------------------------------------ intake

    def enqueue(
        self, incoming: Incoming, *, handoff: bool = False, now: datetime | None = None
    ) -> EnqueueResult | None:
        """Append the user turn and enqueue its job in one transaction.

        Idempotent per dedupe key: an event seen before returns its job with ``created=False`` and
        stores nothing. Returns None (and stores nothing) when the channel is switched off.

        Human handoff: in a conversation handed to a human nothing is stored (``handoff`` set,
        ``created`` False). ``handoff=True`` (the message asks for a human) stores the turn with a
        cancelled job (so a redelivery is recognised) and hands the conversation over."""
        moment = now or utcnow()
        try:
            with self._transaction() as connection:
                existing = _job_by_dedupe_key(connection, incoming.dedupe_key)
                if existing is not None:
                    return existing
                enabled = connection.scalar(
                    select(channel_settings.c.enabled).where(
                        *_channel_filter(incoming.platform, incoming.workspace, incoming.channel)
                    )
                )
                if enabled is False:
                    return None
                conversation_id = self._conversation_id(connection, incoming.conversation, moment)
                handed_off = connection.scalar(
                    select(conversations.c.handoff_at).where(conversations.c.id == conversation_id)
                )
                if handed_off is not None:
                    return EnqueueResult(
                        job_id=0,
                        conversation_id=conversation_id,
                        message_id=0,
                        created=False,
                        handoff=True,
                    )
                message_id = connection.execute(
                    insert(messages)
                    .values(
                        conversation_id=conversation_id,
                        role=Role.USER,
                        author_id=incoming.author_id,
                        author_name=incoming.author_name,
                        text=incoming.text,
                        platform_message_id=incoming.message_id,
                        created_at=moment,
                    )
                    .returning(messages.c.id)
                ).scalar_one()
                job_id = connection.execute(
                    insert(jobs)
                    .values(
                        conversation_id=conversation_id,
                        message_id=message_id,
                        dedupe_key=incoming.dedupe_key,
                        status=JobStatus.CANCELLED if handoff else JobStatus.QUEUED,
                        attempts=0,
                        available_at=moment,
                        reply_target=dict(incoming.reply_target),
                        reply_message_ids=[],
                        created_at=moment,
                        updated_at=moment,
                        finished_at=moment if handoff else None,
                        error=HANDOFF_ERROR if handoff else None,
                    )
                    .returning(jobs.c.id)
                ).scalar_one()
                if handoff:
                    connection.execute(
                        update(conversations)
                        .where(conversations.c.id == conversation_id)
                        .values(handoff_at=moment)
                    )
                return EnqueueResult(
                    job_id=job_id,
                    conversation_id=conversation_id,
                    message_id=message_id,
                    created=True,
                    handoff=handoff,
                )
        except IntegrityError:
            # Another process stored the same event between our check and our insert.
            with self._transaction() as connection:
                raced = _job_by_dedupe_key(connection, incoming.dedupe_key)
            if raced is None:
                raise
            return raced

    def _conversation_id(self, connection: Connection, key: ConversationKey, now: datetime) -> int:
        found = connection.scalar(select(conversations.c.id).where(*_key_filter(key)))
        if found is not None:
            return int(found)
        upsert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        connection.execute(
            upsert(conversations)
            .values(
                platform=key.platform,
                workspace=key.workspace,
                channel=key.channel,
                thread=key.thread,
                created_at=now,
            )
            .on_conflict_do_nothing()
        )
        return int(
            connection.execute(select(conversations.c.id).where(*_key_filter(key))).scalar_one()
        )

    # ------------------------------------------------------------------ worker

    def claim(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        platforms: Iterable[str] | None = None,
        history_limit: int = 0,
        now: datetime | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` jobs: for each conversation only its oldest unfinished job, so
        replies stay in order and a conversation never has two jobs running. Jobs whose lease
        expired (their worker died) are claimable again. With ``history_limit`` each job comes with
        the newest turns of its conversation (read in the same transaction)."""
        if limit <= 0:
            return []
        moment = now or utcnow()
        lease_until = moment + timedelta(seconds=lease_seconds)
        earlier = jobs.alias("earlier")
        claimable = or_(
            and_(jobs.c.status == JobStatus.QUEUED, jobs.c.available_at <= moment),
            and_(jobs.c.status == JobStatus.RUNNING, jobs.c.lease_until < moment),
        )
        blocked_by_earlier = (
            select(earlier.c.id)
            .where(
                earlier.c.conversation_id == jobs.c.conversation_id,
                earlier.c.id < jobs.c.id,
                earlier.c.status.in_(PENDING),
            )
            .exists()
        )
        query = (
            select(jobs.c.id)
            .join(conversations, conversations.c.id == jobs.c.conversation_id)
            .where(claimable, ~blocked_by_earlier)
            .order_by(jobs.c.available_at, jobs.c.id)
            .limit(limit)
        )
        if platforms is not None:
            query = query.where(conversations.c.platform.in_(list(platforms)))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=jobs)
        claimed: list[ClaimedJob] = []
        with self._transaction() as connection:
            candidates = list(connection.scalars(query))
            won: list[int] = []
            for job_id in candidates:
                result = connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, claimable)
                    .values(
                        status=JobStatus.RUNNING,
                        worker_id=worker_id,
                        lease_until=lease_until,
                        attempts=jobs.c.attempts + 1,
                        updated_at=moment,
                    )
                )
                if result.rowcount == 1:
                    won.append(job_id)
            if not won:
                return []
            rows = connection.execute(
                select(
                    jobs.c.id,
                    jobs.c.conversation_id,
                    jobs.c.message_id,
                    jobs.c.attempts,
                    jobs.c.reply_target,
                    jobs.c.reply_text,
                    jobs.c.reply_message_ids,
                    jobs.c.created_at,
                    conversations.c.platform,
                    conversations.c.workspace,
                    conversations.c.channel,
                    conversations.c.thread,
                    channel_settings.c.system_prompt,
                    channel_settings.c.max_reply_chars,
                    channel_settings.c.language,
                )
                .join(conversations, conversations.c.id == jobs.c.conversation_id)
                .outerjoin(
                    channel_settings,
                    and_(
                        channel_settings.c.platform == conversations.c.platform,
                        channel_settings.c.workspace == conversations.c.workspace,
                        channel_settings.c.channel == conversations.c.channel,
                    ),
                )
                .where(jobs.c.id.in_(won))
                .order_by(jobs.c.available_at, jobs.c.id)
            ).all()
            for row in rows:
                history = (
                    tuple(_history(connection, row.conversation_id, row.message_id, history_limit))
                    if history_limit > 0
                    else ()
                )
                claimed.append(
                    ClaimedJob(
                        id=row.id,
                        conversation_id=row.conversation_id,
                        conversation=ConversationKey(
                            platform=row.platform,
                            workspace=row.workspace,
                            channel=row.channel,
                            thread=row.thread,
                        ),
                        message_id=row.message_id,
                        worker_id=worker_id,
                        attempt=row.attempts,
                        lease_until=lease_until,
                        reply_target=dict(row.reply_target or {}),
                        reply_text=row.reply_text,
                        reply_message_ids=tuple(row.reply_message_ids or ()),
                        system_prompt=row.system_prompt,
                        max_reply_chars=row.max_reply_chars,
                        language=row.language,
                        history=history,
                        enqueued_at=row.created_at,
                    )
                )
        return claimed

    def _update_owned(self, job: ClaimedJob, **values: Any) -> bool:
        """Update a job only while it is still ours (same worker, same attempt, running)."""
        with self._transaction() as connection:
            return _update_owned(connection, job, values)

    def renew_lease(self, job: ClaimedJob, *, lease_seconds: float) -> bool:
        """Extend our lease. False means the job is no longer ours (reclaimed or finished)."""
        moment = utcnow()
        return self._update_owned(
            job, lease_until=moment + timedelta(seconds=lease_seconds), updated_at=moment
        )

    def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation up to and including a message, oldest first."""
        with self._transaction() as connection:
            return _history(connection, conversation_id, up_to_message_id, limit)

    def record_reply_progress(
        self,
        job: ClaimedJob,
        *,
        reply_message_ids: Sequence[str],
        reply_text: str | None = None,
        trace: JobTrace | None = None,
    ) -> bool:
        """Remember what was already posted (and, once generated, the full reply text and how it
        was made, so a later attempt that only delivers it keeps the trace)."""
        values: dict[str, Any] = {
            "reply_message_ids": list(reply_message_ids),
            "updated_at": utcnow(),
        }
        if reply_text is not None:
            values["reply_text"] = reply_text
        values.update(_trace_values(trace))
        return self._update_owned(job, **values)

    def complete(
        self,
        job: ClaimedJob,
        *,
        reply_text: str,
        reply_message_ids: Sequence[str],
        token_count: int | None,
        trace: JobTrace | None = None,
    ) -> bool:
        """Record the assistant turn and mark the job done, in one transaction. ``trace`` is None
        when an earlier attempt generated the reply (its trace was stored then).

        Returns False (and stores nothing) when the job is no longer ours."""
        moment = utcnow()
        with self._transaction() as connection:
            done = _update_owned(
                connection,
                job,
                {
                    "status": JobStatus.DONE,
                    "reply_text": reply_text,
                    "reply_message_ids": list(reply_message_ids),
                    "lease_until": None,
                    "error": None,
                    "finished_at": moment,
                    "updated_at": moment,
                    **_trace_values(trace),
                },
            )
            if not done:
                return False
            connection.execute(
                insert(messages).values(
                    conversation_id=job.conversation_id,
                    role=Role.ASSISTANT,
                    author_id="",
                    author_name="",
                    text=reply_text,
                    platform_message_id=reply_message_ids[0] if reply_message_ids else None,
                    token_count=token_count,
                    reply_to_id=job.message_id,
                    created_at=moment,
                )
            )
            return True

    def retry_later(
        self, job: ClaimedJob, *, error: str, delay_seconds: float, reply_text: str | None = None
    ) -> bool:
        """Put the job back in the queue after ``delay_seconds``, keeping what was generated."""
        moment = utcnow()
        values: dict[str, Any] = {
            "status": JobStatus.QUEUED,
            "available_at": moment + timedelta(seconds=delay_seconds),
            "lease_until": None,
            "worker_id": None,
            "error": error,
            "updated_at": moment,
        }
        if reply_text is not None:
            values["reply_text"] = reply_text
        return self._update_owned(job, **values)

    def fail(self, job: ClaimedJob, *, error: str) -> bool:
        moment = utcnow()
        return self._update_owned(
            job,
            status=JobStatus.FAILED,
            error=error,
            lease_until=None,
            finished_at=moment,
            updated_at=moment,
        )

    def release(self, job: ClaimedJob) -> bool:
        """Hand a job back untouched (clean shutdown): queued again, this attempt not counted."""
        moment = utcnow()
        return self._update_owned(
            job,
            status=JobStatus.QUEUED,
            worker_id=None,
            lease_until=None,
            attempts=jobs.c.attempts - 1,
            available_at=moment,
            updated_at=moment,
        )

    def requeue_expired(self, *, now: datetime | None = None) -> int:
        """Start-up recovery: jobs left running by a dead process go back to the queue."""
        moment = now or utcnow()
        with self._transaction() as connection:
            result = connection.execute(
                update(jobs)
                .where(jobs.c.status == JobStatus.RUNNING, jobs.c.lease_until < moment)
                .values(
                    status=JobStatus.QUEUED, worker_id=None, lease_until=None, updated_at=moment
                )
            )
            return int(result.rowcount)

    # ------------------------------------------------------------------ reads

    def job(self, job_id: int) -> JobRecord | None:
        with self._transaction() as connection:
            row = connection.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else _record(row)

    def jobs(self, *, status: JobStatus | None = None) -> list[JobRecord]:
        query = select(jobs).order_by(jobs.c.id)
        if status is not None:
            query = query.where(jobs.c.status == status)
        with self._transaction() as connection:
            return [_record(row) for row in connection.execute(query)]

    def count_jobs(
        self, *, statuses: Iterable[JobStatus] = PENDING, platform: str | None = None
    ) -> int:
        query = select(func.count(jobs.c.id)).where(jobs.c.status.in_(list(statuses)))
        if platform is not None:
            query = query.join(conversations, conversations.c.id == jobs.c.conversation_id).where(
                conversations.c.platform == platform
            )
        with self._transaction() as connection:
            return int(connection.scalar(query) or 0)

    def job_counts(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status (the metrics read it on every scrape)."""
        query = select(jobs.c.status, func.count(jobs.c.id)).group_by(jobs.c.status)
        with self._transaction() as connection:
            return {JobStatus(status): int(count) for status, count in connection.execute(query)}

    def feedback_counts(self) -> dict[Rating, int]:
        """How many 👍 and 👎 are stored (the metrics read it on every scrape)."""
        query = select(feedback.c.rating, func.count(feedback.c.id)).group_by(feedback.c.rating)
        with self._transaction() as connection:
            return {Rating(rating): int(count) for rating, count in connection.execute(query)}

    def handoffs_waiting(self) -> int:
        """Conversations handed to a human and not resumed yet, everywhere (the metrics)."""
        query = select(func.count(conversations.c.id)).where(
            conversations.c.handoff_at.is_not(None)
        )
        with self._transaction() as connection:
            return int(connection.scalar(query) or 0)

    def ping(self) -> None:
        """Raise unless the database answers (readiness checks)."""
        with self._transaction() as connection:
            connection.exec_driver_sql("SELECT 1")

    def queue_position(self, job_id: int) -> int:
        """How many unfinished jobs were enqueued before this one (0 = next)."""
        with self._transaction() as connection:
            return int(
                connection.scalar(
                    select(func.count(jobs.c.id)).where(
                        jobs.c.id < job_id, jobs.c.status.in_(PENDING)
                    )
                )
                or 0
            )

    def conversation_id(self, key: ConversationKey) -> int | None:
        with self._transaction() as connection:
            found = connection.scalar(select(conversations.c.id).where(*_key_filter(key)))
        return None if found is None else int(found)

    def messages(self, key: ConversationKey) -> list[StoredMessage]:
        with self._transaction() as connection:
            rows = connection.execute(
                select(messages)
                .join(conversations, conversations.c.id == messages.c.conversation_id)
                .where(*_key_filter(key))
                .order_by(func.coalesce(messages.c.reply_to_id, messages.c.id), messages.c.id)
            ).all()
        return [_stored(row) for row in rows]

    def forget_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Delete every stored turn of a channel and its threads (jobs too); returns messages deleted.

        Jobs still queued or running for the channel go too, so no reply lands afterwards."""
        with self._transaction() as connection:
            conversation_ids = list(
                connection.scalars(
                    select(conversations.c.id).where(
                        conversations.c.platform == platform,
                        conversations.c.workspace == workspace,
                        conversations.c.channel == channel,
                    )
                )
            )
            if not conversation_ids:
                return 0
            in_channel = messages.c.conversation_id.in_(conversation_ids)
            deleted = connection.scalar(select(func.count(messages.c.id)).where(in_channel))
            connection.execute(
                delete(feedback).where(
                    feedback.c.job_id.in_(
                        select(jobs.c.id).where(jobs.c.conversation_id.in_(conversation_ids))
                    )
                )
            )
            connection.execute(delete(jobs).where(jobs.c.conversation_id.in_(conversation_ids)))
            connection.execute(
                delete(messages).where(in_channel, messages.c.reply_to_id.is_not(None))
            )
            connection.execute(delete(messages).where(in_channel))
            connection.execute(
                delete(conversations).where(conversations.c.id.in_(conversation_ids))
            )
            return int(deleted or 0)

    def job_for_event(self, dedupe_key: str) -> EnqueueResult | None:
        """The job an event was already stored as (``created=False``), or None."""
        with self._transaction() as connection:
            return _job_by_dedupe_key(connection, dedupe_key)

    def pending_in_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Jobs queued or running in a channel and its threads (the per-channel queue limit)."""
        query = (
            select(func.count(jobs.c.id))
            .join(conversations, conversations.c.id == jobs.c.conversation_id)
            .where(
                jobs.c.status.in_(PENDING),
                conversations.c.platform == platform,
                conversations.c.workspace == workspace,
                conversations.c.channel == channel,
            )
        )
        with self._transaction() as connection:
            return int(connection.scalar(query) or 0)

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
                .where(
                    conversations.c.platform == platform,
                    conversations.c.workspace == workspace,
                    conversations.c.channel == channel,
                )
                .order_by(
                    conversations.c.thread,
                    func.coalesce(messages.c.reply_to_id, messages.c.id),
                    messages.c.id,
                )
            ).all()
        return [
            (
                ConversationKey(
                    platform=row.c_platform,
                    workspace=row.c_workspace,
                    channel=row.c_channel,
                    thread=row.c_thread,
                ),
                _stored(row),
            )
            for row in rows
        ]

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

    # ------------------------------------------------------------------ feedback

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
        stored). Idempotent: the same person's same rating on the same reply is stored once.
        ``channel`` narrows the search where message ids are unique only per channel (Slack)."""
        with self._transaction() as connection:
            job_id = _reply_job(connection, platform, workspace, channel, message_id)
            if job_id is None:
                return None
            upsert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            connection.execute(
                upsert(feedback)
                .values(
                    job_id=job_id,
                    user_id=user_id,
                    rating=rating,
                    platform_message_id=message_id,
                    created_at=now or utcnow(),
                )
                .on_conflict_do_nothing()
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
        """Delete what ``add_feedback`` stored (the reaction was removed); the job id or None."""
        with self._transaction() as connection:
            job_id = _reply_job(connection, platform, workspace, channel, message_id)
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
                question=_excerpt(row.text or ""),
                answer=_excerpt(row.reply_text or ""),
            )
            for row in worst
        )
        return FeedbackReport(channels=channels, worst=rated)

    # ------------------------------------------------------------------ human handoff

    def resume_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """End the handoff of every conversation of a channel (its threads included); returns
        how many were handed to a human."""
        with self._transaction() as connection:
            result = connection.execute(
                update(conversations)
                .where(
                    conversations.c.platform == platform,
                    conversations.c.workspace == workspace,
                    conversations.c.channel == channel,
                    conversations.c.handoff_at.is_not(None),
                )
                .values(handoff_at=None)
            )
            return int(result.rowcount)

    def handoffs_in_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Conversations of a channel (threads included) now handed to a human."""
        with self._transaction() as connection:
            return int(
                connection.scalar(
                    select(func.count(conversations.c.id)).where(
                        conversations.c.platform == platform,
                        conversations.c.workspace == workspace,
                        conversations.c.channel == channel,
                        conversations.c.handoff_at.is_not(None),
                    )
                )
                or 0
            )

    # ------------------------------------------------------------------ channel settings

    def channel_config(self, *, platform: str, workspace: str, channel: str) -> ChannelConfig:
        with self._transaction() as connection:
            row = connection.execute(
                select(
                    channel_settings.c.system_prompt,
                    channel_settings.c.enabled,
                    channel_settings.c.max_reply_chars,
                    channel_settings.c.language,
                ).where(*_channel_filter(platform, workspace, channel))
            ).first()
        if row is None:
            return ChannelConfig()
        return ChannelConfig(
            system_prompt=row.system_prompt,
            enabled=row.enabled,
            max_reply_chars=row.max_reply_chars,
            language=row.language,
        )

    def update_channel_config(
        self, *, platform: str, workspace: str, channel: str, changes: Mapping[str, Any]
    ) -> ChannelConfig:
        """Change some of a channel's settings (``changes``: ChannelConfig field -> value), leaving
        the others as they are, in one statement (an upsert: two admins changing different
        settings at once both win). Returns the channel's settings afterwards."""
        unknown = set(changes) - CHANNEL_CONFIG_FIELDS
        if unknown:
            raise ValueError(f"not a channel setting: {', '.join(sorted(unknown))}")
        moment = utcnow()
        defaults = dataclasses.asdict(ChannelConfig())
        upsert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = (
            upsert(channel_settings)
            .values(
                platform=platform,
                workspace=workspace,
                channel=channel,
                **{**defaults, **changes},
                updated_at=moment,
            )
            .on_conflict_do_update(
                index_elements=["platform", "workspace", "channel"],
                set_={**changes, "updated_at": moment},
            )
        )
        with self._transaction() as connection:
            connection.execute(statement)
        return self.channel_config(platform=platform, workspace=workspace, channel=channel)

    def set_channel_config(
        self, *, platform: str, workspace: str, channel: str, config: ChannelConfig
    ) -> None:
        with self._transaction() as connection:
            connection.execute(
                delete(channel_settings).where(*_channel_filter(platform, workspace, channel))
            )
            connection.execute(
                insert(channel_settings).values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    system_prompt=config.system_prompt,
                    enabled=config.enabled,
                    max_reply_chars=config.max_reply_chars,
                    language=config.language,
                    updated_at=utcnow(),
                )
            )


def _reply_job(
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


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def _key_filter(key: ConversationKey) -> tuple[ColumnElement[bool], ...]:
    return (
        conversations.c.platform == key.platform,
        conversations.c.workspace == key.workspace,
        conversations.c.channel == key.channel,
        conversations.c.thread == key.thread,
    )


def _channel_filter(platform: str, workspace: str, channel: str) -> tuple[ColumnElement[bool], ...]:
    return (
        channel_settings.c.platform == platform,
        channel_settings.c.workspace == workspace,
        channel_settings.c.channel == channel,
    )


def _update_owned(connection: Connection, job: ClaimedJob, values: dict[str, Any]) -> bool:
    result = connection.execute(
        update(jobs)
        .where(
            jobs.c.id == job.id,
            jobs.c.worker_id == job.worker_id,
            jobs.c.attempts == job.attempt,
            jobs.c.status == JobStatus.RUNNING,
        )
        .values(**values)
    )
    return result.rowcount == 1


def _job_by_dedupe_key(connection: Connection, dedupe_key: str) -> EnqueueResult | None:
    row = connection.execute(
        select(jobs.c.id, jobs.c.conversation_id, jobs.c.message_id).where(
            jobs.c.dedupe_key == dedupe_key
        )
    ).first()
    if row is None:
        return None
    return EnqueueResult(
        job_id=row.id, conversation_id=row.conversation_id, message_id=row.message_id, created=False
    )


def _history(
    connection: Connection, conversation_id: int, up_to_message_id: int, limit: int
) -> list[StoredMessage]:
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
    return [_stored(row) for row in reversed(rows)]


def _stored(row: Row[Any]) -> StoredMessage:
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


def _record(row: Row[Any]) -> JobRecord:
    return JobRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        message_id=row.message_id,
        dedupe_key=row.dedupe_key,
        status=JobStatus(row.status),
        attempts=row.attempts,
        worker_id=row.worker_id,
        error=row.error,
        reply_text=row.reply_text,
        reply_message_ids=tuple(row.reply_message_ids or ()),
        prompt_tokens=row.prompt_tokens,
        generation_ms=row.generation_ms,
        model_id=row.model_id,
    )


def _trace_values(trace: JobTrace | None) -> dict[str, Any]:
    if trace is None:
        return {}
    return {
        "prompt_tokens": trace.prompt_tokens,
        "generation_ms": trace.generation_ms,
        "model_id": trace.model_id[:256],
    }
