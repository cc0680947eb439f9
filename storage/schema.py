"""SQLAlchemy 2.x typed ORM models. Change them only together with a new Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bot.records import JobStatus, Rating, Role

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (portable across SQLite and PostgreSQL), returns aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "thread", name="uq_conversation_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    workspace: Mapped[str] = mapped_column(String(128), default="")
    channel: Mapped[str] = mapped_column(String(128))
    thread: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Migration 0005: when someone asked for a human here; while set the bot stays quiet in this
    # conversation (until `resume`).
    handoff_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # Migration 0012: a user's messages of the day (the daily token quota) and the reply to a
        # message (its tokens; also what deleting a message cascades to).
        Index("ix_messages_author_id_created_at", "author_id", "created_at"),
        Index("ix_messages_reply_to_id", "reply_to_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(
        Enum(Role, name="message_role", values_callable=lambda e: [m.value for m in e])
    )
    author_id: Mapped[str] = mapped_column(String(128), default="")
    author_name: Mapped[str] = mapped_column(String(256), default="")
    text: Mapped[str] = mapped_column(Text)
    # Indexed (migration 0004): reactions find the reply they are on by this id.
    platform_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    token_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # For an assistant turn: the user message it answers. History is ordered by
    # coalesce(reply_to_id, id), id so a reply sits right after its question even when other
    # questions arrived while it was being generated.
    reply_to_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_available_at", "status", "available_at"),
        Index("ix_jobs_conversation_id_status", "conversation_id", "status"),
        Index("ix_jobs_created_at", "created_at"),  # migration 0012: `solarbot usage` by day
        # Migration 0006: ids are never handed out twice (they reach the platforms).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", values_callable=lambda e: [m.value for m in e]),
        default=JobStatus.QUEUED,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    reply_target: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    reply_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    reply_message_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The trace of the reply that finished the job (migration 0002): prompt size in real tokens,
    # wall time from the engine request to the last token, and the model that wrote it.
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    generation_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(256), nullable=True)


class ChannelSettings(Base):
    __tablename__ = "channel_settings"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", name="uq_channel_settings_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    workspace: Mapped[str] = mapped_column(String(128), default="")
    channel: Mapped[str] = mapped_column(String(128))
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Migration 0003: the longest reply in characters (None = no cap) and the language replies
    # should be in (None = whatever the model picks; appended to the system prompt).
    max_reply_chars: Mapped[int | None] = mapped_column(Integer, nullable=True)
    language: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Migration 0011: the knowledge-base collections answers come from (names joined by commas;
    # None = none) and the answering mode ("strict"/"assist"; None = assist).
    kb_collections: Mapped[str | None] = mapped_column(Text, nullable=True)
    kb_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Migration 0015: "auto" (every new top-level message gets an answer in a thread) or
    # "mention" (None = mention).
    answer_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobChunk(Base):
    """A knowledge-base chunk given to the model for a job's reply (migration 0011), at its
    ``position`` (0 = the passage numbered [1]). No foreign key to the chunk: a document synced
    or removed later leaves the trace as it was (readers join what still exists)."""

    __tablename__ = "job_chunks"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[int] = mapped_column(Integer, index=True)


class Feedback(Base):
    """A 👍/👎 reaction on a bot reply (migration 0004): who, when, which reply (its job). Removing
    the reaction deletes the row. One row per person and reply (migration 0008): their latest
    rating."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("job_id", "user_id", name="uq_feedback_rater"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(128))
    rating: Mapped[Rating] = mapped_column(
        Enum(
            Rating,
            name="feedback_rating",
            native_enum=False,
            length=8,
            values_callable=lambda e: [m.value for m in e],
        )
    )
    platform_message_id: Mapped[str] = mapped_column(String(128))  # the message reacted to
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HandoffPing(Base):
    """A ping of a platform's support group/role for a human handoff (migration 0009): when,
    in which conversation, for whom. Read to rate-limit pings (one per conversation and asker
    within a cooldown, a cap per workspace and window) across every ingress process; rows older
    than the longer of the two windows are deleted by the next ping. ``requester`` is a SHA-256
    digest of the asker's platform id, not the id itself."""

    __tablename__ = "handoff_pings"
    __table_args__ = (Index("ix_handoff_pings_workspace", "platform", "workspace", "pinged_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    workspace: Mapped[str] = mapped_column(String(128), default="")
    channel: Mapped[str] = mapped_column(String(128))
    thread: Mapped[str] = mapped_column(String(128), default="")
    requester: Mapped[str] = mapped_column(String(64))
    pinged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KbCollection(Base):
    """A named set of documents for the knowledge base (migration 0010)."""

    __tablename__ = "kb_collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KbDocument(Base):
    """One source of a collection (a file, a web page, a message learned from chat): where it was
    read from (``source_uri``, unique within the collection), the link a citation shows, and the
    checksum of its text so that ``kb sync`` skips unchanged ones (migration 0010)."""

    __tablename__ = "kb_documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "source_uri", name="uq_kb_documents_source"),
        Index("ix_kb_documents_collection_id_origin", "collection_id", "origin"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("kb_collections.id", ondelete="CASCADE"))
    source_uri: Mapped[str] = mapped_column(Text)
    # What ``kb add`` was given that led here (a folder, a sitemap, or the source itself): ``kb
    # sync`` reads each origin again, finding new files and pages and noticing vanished ones.
    origin: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    link: Mapped[str] = mapped_column(Text)
    checksum: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KbChunk(Base):
    """A passage of a document, in document order (migration 0010). ``context`` is the document's
    title and the chunk's heading path as one line: the full-text index weighs it above the text
    (SQLite: the external-content FTS5 table ``kb_chunks_fts`` kept in sync by triggers;
    PostgreSQL: the generated ``search`` tsvector column with a GIN index, which the ORM does not
    map)."""

    __tablename__ = "kb_chunks"
    __table_args__ = (Index("ix_kb_chunks_document_id_position", "document_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("kb_documents.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    heading_path: Mapped[list[str]] = mapped_column(JSON, default=list)
    context: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)


class HandoffFollowup(Base):
    """Something to post to the support group later about a handoff (migration 0013): the ping
    held back because the handoff came outside support hours (``kind`` "ping", due when the hours
    start), or a reminder that nobody has answered (``kind`` "reminder"). Valid only while the
    conversation is still handed off since ``handoff_at``. A sender claims a row (``claimed_until``,
    a lease) and marks it ``sent_at``; a row claimed by a process that died is claimable again once
    its lease is over."""

    __tablename__ = "handoff_followups"
    __table_args__ = (Index("ix_handoff_followups_due", "sent_at", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    handoff_at: Mapped[datetime] = mapped_column(UTCDateTime)
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the asker asked (the texts)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class MessageAttachment(Base):
    """A file attached to a user message (migration 0014_attachments), at its ``position`` among
    the message's files: its name and the text read from it, or why it could not be read
    (``problem``, ``bot.records.AttachmentProblem``; ``text`` empty then). Deleted with its
    message (``forget``)."""

    __tablename__ = "message_attachments"

    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    media_type: Mapped[str] = mapped_column(String(128), default="")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text, default="")
    problem: Mapped[str | None] = mapped_column(String(32), nullable=True)
