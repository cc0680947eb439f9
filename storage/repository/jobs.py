"""The job queue: its rules in one place.

- Enqueue: ``enqueue`` appends the user turn and its job in one transaction, idempotent per
  dedupe key (``bot.dedupe``); nothing in a switched-off channel or a conversation handed to a
  human; nothing past the channel's queue limit, counted in the same transaction.
- Identity: a job id is never handed out twice (AUTOINCREMENT on SQLite, a sequence on
  PostgreSQL), and ``job_key`` gives every job a key of its own, the same in every attempt, that
  idempotency keys and nonces sent to platforms are made of.
- Claim: ``claim`` leases, for each conversation, only its oldest unfinished job (replies stay in
  order, a conversation never has two jobs running); a job whose lease expired is claimable again.
- Fencing: a lease belongs to (worker_id, attempts); a worker whose lease expired and whose job
  was reclaimed can no longer change that job (``renew_lease``, ``record_reply_progress``,
  ``complete``, ``retry_later``, ``fail``, ``release`` all return False then).
- Recovery: ``requeue_expired`` at start-up. Reads (``job``, ``jobs``, counts, positions) serve
  commands and metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from bot.records import (
    ClaimedJob,
    ConversationKey,
    EnqueueResult,
    Incoming,
    JobRecord,
    JobStatus,
    JobTrace,
    Role,
)
from storage.repository.base import RepositoryBase, serialise_on
from storage.repository.channels import (
    channel_enabled,
    collections_of,
    hand_off,
    handed_off,
    mode_of,
)
from storage.repository.conversations import (
    conversation_id_for,
    read_history,
    store_attachments,
)
from storage.repository.tables import (
    PENDING,
    channel_settings,
    conversations,
    in_channel,
    job_chunks,
    jobs,
    messages,
)
from storage.schema import utcnow

HANDOFF_ERROR = "handed to a human (no reply)"
QUEUE_FULL = "queue_full"  # EnqueueResult.refused: the channel's queue limit (bot.limits)


class JobQueue(RepositoryBase):
    # ------------------------------------------------------------------ enqueue

    def enqueue(
        self,
        incoming: Incoming,
        *,
        handoff: bool = False,
        channel_queue_limit: int = 0,
        now: datetime | None = None,
    ) -> EnqueueResult | None:
        """Append the user turn and enqueue its job in one transaction.

        Idempotent per dedupe key: an event seen before returns its job with ``created=False`` and
        stores nothing. Returns None (and stores nothing) when the channel is switched off.

        ``channel_queue_limit`` (0: none): with that many jobs already queued or running in the
        channel (threads included) nothing is stored and the result says ``refused=QUEUE_FULL``.
        The count and the insert are one transaction that no other enqueue into the channel can
        interleave with: on SQLite every transaction here holds the write lock from its BEGIN
        IMMEDIATE; on PostgreSQL the transaction first takes the channel's advisory lock.

        Human handoff: in a conversation handed to a human nothing is stored (``handoff`` set,
        ``created`` False). ``handoff=True`` (the message asks for a human) stores the turn with a
        cancelled job (so a redelivery is recognised) and hands the conversation over."""
        moment = now or utcnow()
        try:
            with self._transaction() as connection:
                existing = _job_by_dedupe_key(connection, incoming.dedupe_key)
                if existing is not None:
                    return existing
                if not channel_enabled(
                    connection, incoming.platform, incoming.workspace, incoming.channel
                ):
                    return None
                if channel_queue_limit > 0 and not _room_in_channel(
                    connection, incoming, channel_queue_limit
                ):
                    return EnqueueResult(
                        job_id=0,
                        conversation_id=0,
                        message_id=0,
                        created=False,
                        refused=QUEUE_FULL,
                    )
                conversation_id = conversation_id_for(connection, incoming.conversation, moment)
                if handed_off(connection, conversation_id):
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
                store_attachments(connection, message_id, incoming.attachments)
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
                    hand_off(connection, conversation_id, moment)
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

    # ------------------------------------------------------------------ claim and lease

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
                    jobs.c.dedupe_key,
                    jobs.c.created_at,
                    conversations.c.platform,
                    conversations.c.workspace,
                    conversations.c.channel,
                    conversations.c.thread,
                    channel_settings.c.system_prompt,
                    channel_settings.c.max_reply_chars,
                    channel_settings.c.language,
                    channel_settings.c.kb_collections,
                    channel_settings.c.kb_mode,
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
                    tuple(
                        read_history(connection, row.conversation_id, row.message_id, history_limit)
                    )
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
                        kb_collections=collections_of(row.kb_collections),
                        kb_mode=mode_of(row.kb_mode),
                        history=history,
                        enqueued_at=row.created_at,
                        job_key=job_key(row.id, row.dedupe_key, row.created_at),
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
        with self._transaction() as connection:
            if not _update_owned(connection, job, values):
                return False
            _store_chunk_ids(connection, job.id, trace)
            return True

    # ------------------------------------------------------------------ finish

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
            _store_chunk_ids(connection, job.id, trace)
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

    # ------------------------------------------------------------------ recovery

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

    def job_chunk_ids(self, job_id: int) -> tuple[int, ...]:
        """The knowledge-base chunk ids given to the model for the job's reply, in the order
        they were numbered [1]..[k] (empty: none were given)."""
        with self._transaction() as connection:
            return tuple(
                connection.scalars(
                    select(job_chunks.c.chunk_id)
                    .where(job_chunks.c.job_id == job_id)
                    .order_by(job_chunks.c.position)
                )
            )

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

    def job_for_event(self, dedupe_key: str) -> EnqueueResult | None:
        """The job an event was already stored as (``created=False``), or None."""
        with self._transaction() as connection:
            return _job_by_dedupe_key(connection, dedupe_key)

    def pending_in_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Jobs queued or running in a channel and its threads (what the queue limit counts)."""
        with self._transaction() as connection:
            return _pending_in_channel(connection, platform, workspace, channel)


def _pending_in_channel(connection: Connection, platform: str, workspace: str, channel: str) -> int:
    query = (
        select(func.count(jobs.c.id))
        .join(conversations, conversations.c.id == jobs.c.conversation_id)
        .where(jobs.c.status.in_(PENDING), *in_channel(platform, workspace, channel))
    )
    return int(connection.scalar(query) or 0)


def _room_in_channel(connection: Connection, incoming: Incoming, limit: int) -> bool:
    """Whether the channel has fewer than ``limit`` pending jobs, the channel held for the rest of
    the transaction (on PostgreSQL by an advisory lock keyed by the channel; SQLite's write lock
    is held from BEGIN IMMEDIATE)."""
    serialise_on(connection, "queue", incoming.platform, incoming.workspace, incoming.channel)
    pending = _pending_in_channel(
        connection, incoming.platform, incoming.workspace, incoming.channel
    )
    return pending < limit


def job_key(job_id: int, dedupe_key: str, created_at: datetime) -> str:
    """The key idempotency keys and nonces sent to a platform are made of: the same in every
    attempt of a job (all three are stored with it) and different for every job ever. Job ids
    are never reused (migration 0006), and the event's dedupe key and the enqueue time make the
    key differ even where an id was reused before that migration, or a forgotten event comes
    again. 16 hex digits (64 bits), short enough for Discord's 25-character nonce."""
    material = f"{job_id}\x00{dedupe_key}\x00{created_at.isoformat()}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:16]


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


def _store_chunk_ids(connection: Connection, job_id: int, trace: JobTrace | None) -> None:
    """The trace's chunk ids replace the job's (a trace from a later generation wins)."""
    if trace is None:
        return
    connection.execute(delete(job_chunks).where(job_chunks.c.job_id == job_id))
    if trace.chunk_ids:
        connection.execute(
            insert(job_chunks),
            [
                {"job_id": job_id, "position": position, "chunk_id": chunk_id}
                for position, chunk_id in enumerate(trace.chunk_ids)
            ],
        )


def _trace_values(trace: JobTrace | None) -> dict[str, Any]:
    if trace is None:
        return {}
    return {
        "prompt_tokens": trace.prompt_tokens,
        "generation_ms": trace.generation_ms,
        "model_id": trace.model_id[:256],
    }
