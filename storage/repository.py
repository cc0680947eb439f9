"""The repository: the only module that issues queries.

All methods are synchronous and short; the asyncio side calls them through ``asyncio.to_thread``.
Every public method is one transaction. Jobs are fenced by (worker_id, attempts): a worker whose
lease expired and whose job was reclaimed can no longer change that job.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from bot.models import (
    ChannelConfig,
    ClaimedJob,
    ConversationKey,
    EnqueueResult,
    Incoming,
    JobRecord,
    JobStatus,
    Role,
    StoredMessage,
)
from storage import database
from storage.schema import ChannelSettings, Conversation, Job, Message, utcnow

PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
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
    def _transaction(self) -> Iterator[Session]:
        with self._local_lock, self._sessions() as session, session.begin():
            yield session

    # ------------------------------------------------------------------ intake

    def enqueue(self, incoming: Incoming, *, now: datetime | None = None) -> EnqueueResult | None:
        """Append the user turn and enqueue its job in one transaction.

        Idempotent per dedupe key: an event seen before returns its job with ``created=False`` and
        stores nothing. Returns None (and stores nothing) when the channel is switched off."""
        moment = now or utcnow()
        try:
            with self._transaction() as session:
                existing = self._job_by_dedupe_key(session, incoming.dedupe_key)
                if existing is not None:
                    return existing
                enabled = session.scalar(
                    select(ChannelSettings.enabled).where(
                        ChannelSettings.platform == incoming.platform,
                        ChannelSettings.workspace == incoming.workspace,
                        ChannelSettings.channel == incoming.channel,
                    )
                )
                if enabled is False:
                    return None
                conversation_id = self._conversation_id(session, incoming.conversation, moment)
                message_id = session.execute(
                    insert(Message)
                    .values(
                        conversation_id=conversation_id,
                        role=Role.USER,
                        author_id=incoming.author_id,
                        author_name=incoming.author_name,
                        text=incoming.text,
                        platform_message_id=incoming.message_id,
                        created_at=moment,
                    )
                    .returning(Message.id)
                ).scalar_one()
                job_id = session.execute(
                    insert(Job)
                    .values(
                        conversation_id=conversation_id,
                        message_id=message_id,
                        dedupe_key=incoming.dedupe_key,
                        status=JobStatus.QUEUED,
                        attempts=0,
                        available_at=moment,
                        reply_target=dict(incoming.reply_target),
                        reply_message_ids=[],
                        created_at=moment,
                        updated_at=moment,
                    )
                    .returning(Job.id)
                ).scalar_one()
                return EnqueueResult(
                    job_id=job_id,
                    conversation_id=conversation_id,
                    message_id=message_id,
                    created=True,
                )
        except IntegrityError:
            # Another process stored the same event between our check and our insert.
            with self._transaction() as session:
                raced = self._job_by_dedupe_key(session, incoming.dedupe_key)
            if raced is None:
                raise
            return raced

    @staticmethod
    def _job_by_dedupe_key(session: Session, dedupe_key: str) -> EnqueueResult | None:
        row = session.execute(
            select(Job.id, Job.conversation_id, Job.message_id).where(Job.dedupe_key == dedupe_key)
        ).first()
        if row is None:
            return None
        return EnqueueResult(
            job_id=row.id,
            conversation_id=row.conversation_id,
            message_id=row.message_id,
            created=False,
        )

    def _conversation_id(self, session: Session, key: ConversationKey, now: datetime) -> int:
        found = session.scalar(select(Conversation.id).where(*self._key_filter(key)))
        if found is not None:
            return found
        values = {
            "platform": key.platform,
            "workspace": key.workspace,
            "channel": key.channel,
            "thread": key.thread,
            "created_at": now,
        }
        upsert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        session.execute(upsert(Conversation).values(**values).on_conflict_do_nothing())
        found = session.scalar(select(Conversation.id).where(*self._key_filter(key)))
        assert found is not None
        return found

    @staticmethod
    def _key_filter(key: ConversationKey) -> tuple[ColumnElement[bool], ...]:
        return (
            Conversation.platform == key.platform,
            Conversation.workspace == key.workspace,
            Conversation.channel == key.channel,
            Conversation.thread == key.thread,
        )

    # ------------------------------------------------------------------ worker

    def claim(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        platforms: Iterable[str] | None = None,
        now: datetime | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` jobs: for each conversation only its oldest unfinished job, so
        replies stay in order and a conversation never has two jobs running. Jobs whose lease
        expired (their worker died) are claimable again."""
        if limit <= 0:
            return []
        moment = now or utcnow()
        lease_until = moment + timedelta(seconds=lease_seconds)
        earlier = aliased(Job)
        claimable = or_(
            and_(Job.status == JobStatus.QUEUED, Job.available_at <= moment),
            and_(Job.status == JobStatus.RUNNING, Job.lease_until < moment),
        )
        blocked_by_earlier = (
            select(earlier.id)
            .where(
                earlier.conversation_id == Job.conversation_id,
                earlier.id < Job.id,
                earlier.status.in_(PENDING),
            )
            .exists()
        )
        query = (
            select(Job.id)
            .join(Conversation, Conversation.id == Job.conversation_id)
            .where(claimable, ~blocked_by_earlier)
            .order_by(Job.available_at, Job.id)
            .limit(limit)
        )
        if platforms is not None:
            query = query.where(Conversation.platform.in_(list(platforms)))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Job)
        claimed: list[ClaimedJob] = []
        with self._transaction() as session:
            ids = list(session.scalars(query))
            for job_id in ids:
                result = session.execute(
                    update(Job)
                    .where(Job.id == job_id, claimable)
                    .values(
                        status=JobStatus.RUNNING,
                        worker_id=worker_id,
                        lease_until=lease_until,
                        attempts=Job.attempts + 1,
                        updated_at=moment,
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                job, conversation, system_prompt = session.execute(
                    select(Job, Conversation, ChannelSettings.system_prompt)
                    .join(Conversation, Conversation.id == Job.conversation_id)
                    .outerjoin(
                        ChannelSettings,
                        and_(
                            ChannelSettings.platform == Conversation.platform,
                            ChannelSettings.workspace == Conversation.workspace,
                            ChannelSettings.channel == Conversation.channel,
                        ),
                    )
                    .where(Job.id == job_id)
                    .execution_options(populate_existing=True)
                ).one()
                claimed.append(
                    ClaimedJob(
                        id=job.id,
                        conversation_id=job.conversation_id,
                        conversation=ConversationKey(
                            platform=conversation.platform,
                            workspace=conversation.workspace,
                            channel=conversation.channel,
                            thread=conversation.thread,
                        ),
                        message_id=job.message_id,
                        worker_id=worker_id,
                        attempt=job.attempts,
                        lease_until=lease_until,
                        reply_target=dict(job.reply_target or {}),
                        reply_text=job.reply_text,
                        reply_message_ids=tuple(job.reply_message_ids or ()),
                        system_prompt=system_prompt,
                    )
                )
        return claimed

    def _owned(self, job: ClaimedJob) -> tuple[ColumnElement[bool], ...]:
        return (
            Job.id == job.id,
            Job.worker_id == job.worker_id,
            Job.attempts == job.attempt,
            Job.status == JobStatus.RUNNING,
        )

    def renew_lease(self, job: ClaimedJob, *, lease_seconds: float) -> bool:
        """Extend our lease. False means the job is no longer ours (reclaimed or finished)."""
        moment = utcnow()
        with self._transaction() as session:
            result = session.execute(
                update(Job)
                .where(*self._owned(job))
                .values(lease_until=moment + timedelta(seconds=lease_seconds), updated_at=moment)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def history(
        self, conversation_id: int, *, up_to_message_id: int, limit: int
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation up to and including a message, oldest first."""
        with self._transaction() as session:
            anchor = func.coalesce(Message.reply_to_id, Message.id)
            rows = session.scalars(
                select(Message)
                .where(
                    Message.conversation_id == conversation_id,
                    or_(
                        and_(Message.reply_to_id.is_(None), Message.id <= up_to_message_id),
                        Message.reply_to_id < up_to_message_id,
                    ),
                )
                .order_by(anchor.desc(), Message.id.desc())
                .limit(limit)
            ).all()
        return [_stored(row) for row in reversed(rows)]

    def record_reply_progress(
        self, job: ClaimedJob, *, reply_message_ids: Sequence[str], reply_text: str | None = None
    ) -> bool:
        """Remember what was already posted (and, once generated, the full reply text)."""
        values: dict[str, object] = {
            "reply_message_ids": list(reply_message_ids),
            "updated_at": utcnow(),
        }
        if reply_text is not None:
            values["reply_text"] = reply_text
        with self._transaction() as session:
            result = session.execute(update(Job).where(*self._owned(job)).values(**values))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def complete(
        self,
        job: ClaimedJob,
        *,
        reply_text: str,
        reply_message_ids: Sequence[str],
        token_count: int | None,
    ) -> bool:
        """Record the assistant turn and mark the job done, in one transaction.

        Returns False (and stores nothing) when the job is no longer ours."""
        moment = utcnow()
        with self._transaction() as session:
            result = session.execute(
                update(Job)
                .where(*self._owned(job))
                .values(
                    status=JobStatus.DONE,
                    reply_text=reply_text,
                    reply_message_ids=list(reply_message_ids),
                    lease_until=None,
                    error=None,
                    finished_at=moment,
                    updated_at=moment,
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            session.execute(
                insert(Message).values(
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
        values: dict[str, object] = {
            "status": JobStatus.QUEUED,
            "available_at": moment + timedelta(seconds=delay_seconds),
            "lease_until": None,
            "worker_id": None,
            "error": error,
            "updated_at": moment,
        }
        if reply_text is not None:
            values["reply_text"] = reply_text
        with self._transaction() as session:
            result = session.execute(update(Job).where(*self._owned(job)).values(**values))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def fail(self, job: ClaimedJob, *, error: str) -> bool:
        moment = utcnow()
        with self._transaction() as session:
            result = session.execute(
                update(Job)
                .where(*self._owned(job))
                .values(
                    status=JobStatus.FAILED,
                    error=error,
                    lease_until=None,
                    finished_at=moment,
                    updated_at=moment,
                )
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def release(self, job: ClaimedJob) -> bool:
        """Hand a job back untouched (clean shutdown): queued again, this attempt not counted."""
        moment = utcnow()
        with self._transaction() as session:
            result = session.execute(
                update(Job)
                .where(*self._owned(job))
                .values(
                    status=JobStatus.QUEUED,
                    worker_id=None,
                    lease_until=None,
                    attempts=Job.attempts - 1,
                    available_at=moment,
                    updated_at=moment,
                )
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def requeue_expired(self, *, now: datetime | None = None) -> int:
        """Start-up recovery: jobs left running by a dead process go back to the queue."""
        moment = now or utcnow()
        with self._transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.status == JobStatus.RUNNING, Job.lease_until < moment)
                .values(
                    status=JobStatus.QUEUED, worker_id=None, lease_until=None, updated_at=moment
                )
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ reads

    def job(self, job_id: int) -> JobRecord | None:
        with self._transaction() as session:
            row = session.get(Job, job_id)
            return None if row is None else _record(row)

    def jobs(self, *, status: JobStatus | None = None) -> list[JobRecord]:
        with self._transaction() as session:
            query = select(Job).order_by(Job.id)
            if status is not None:
                query = query.where(Job.status == status)
            return [_record(row) for row in session.scalars(query)]

    def count_jobs(
        self, *, statuses: Iterable[JobStatus] = PENDING, platform: str | None = None
    ) -> int:
        with self._transaction() as session:
            query = select(func.count(Job.id)).where(Job.status.in_(list(statuses)))
            if platform is not None:
                query = query.join(Conversation, Conversation.id == Job.conversation_id).where(
                    Conversation.platform == platform
                )
            return int(session.scalar(query) or 0)

    def queue_position(self, job_id: int) -> int:
        """How many unfinished jobs were enqueued before this one (0 = next)."""
        with self._transaction() as session:
            return int(
                session.scalar(
                    select(func.count(Job.id)).where(Job.id < job_id, Job.status.in_(PENDING))
                )
                or 0
            )

    def conversation_id(self, key: ConversationKey) -> int | None:
        with self._transaction() as session:
            return session.scalar(select(Conversation.id).where(*self._key_filter(key)))

    def messages(self, key: ConversationKey) -> list[StoredMessage]:
        with self._transaction() as session:
            rows = session.scalars(
                select(Message)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(*self._key_filter(key))
                .order_by(func.coalesce(Message.reply_to_id, Message.id), Message.id)
            ).all()
        return [_stored(row) for row in rows]

    def forget_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Delete every stored turn of a channel and its threads (jobs too); returns messages deleted.

        Jobs still queued or running for the channel are cancelled first so no reply lands after."""
        with self._transaction() as session:
            conversation_ids = list(
                session.scalars(
                    select(Conversation.id).where(
                        Conversation.platform == platform,
                        Conversation.workspace == workspace,
                        Conversation.channel == channel,
                    )
                )
            )
            if not conversation_ids:
                return 0
            deleted = session.scalar(
                select(func.count(Message.id)).where(Message.conversation_id.in_(conversation_ids))
            )
            session.execute(delete(Job).where(Job.conversation_id.in_(conversation_ids)))
            session.execute(
                delete(Message).where(
                    Message.conversation_id.in_(conversation_ids), Message.reply_to_id.is_not(None)
                )
            )
            session.execute(delete(Message).where(Message.conversation_id.in_(conversation_ids)))
            session.execute(delete(Conversation).where(Conversation.id.in_(conversation_ids)))
            return int(deleted or 0)

    # ------------------------------------------------------------------ channel settings

    def channel_config(self, *, platform: str, workspace: str, channel: str) -> ChannelConfig:
        with self._transaction() as session:
            row = session.scalar(
                select(ChannelSettings).where(
                    ChannelSettings.platform == platform,
                    ChannelSettings.workspace == workspace,
                    ChannelSettings.channel == channel,
                )
            )
            if row is None:
                return ChannelConfig()
            return ChannelConfig(system_prompt=row.system_prompt, enabled=row.enabled)

    def set_channel_config(
        self, *, platform: str, workspace: str, channel: str, config: ChannelConfig
    ) -> None:
        with self._transaction() as session:
            session.execute(
                delete(ChannelSettings).where(
                    ChannelSettings.platform == platform,
                    ChannelSettings.workspace == workspace,
                    ChannelSettings.channel == channel,
                )
            )
            session.add(
                ChannelSettings(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    system_prompt=config.system_prompt,
                    enabled=config.enabled,
                )
            )


def _stored(row: Message) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        role=row.role,
        text=row.text,
        author_id=row.author_id,
        author_name=row.author_name,
        platform_message_id=row.platform_message_id,
        token_count=row.token_count,
        created_at=row.created_at,
    )


def _record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        conversation_id=row.conversation_id,
        message_id=row.message_id,
        dedupe_key=row.dedupe_key,
        status=row.status,
        attempts=row.attempts,
        worker_id=row.worker_id,
        error=row.error,
        reply_text=row.reply_text,
        reply_message_ids=tuple(row.reply_message_ids or ()),
    )
