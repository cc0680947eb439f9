"""The Core tables behind the ORM models (``storage.schema``) and the filters several topics use.

Queries use SQLAlchemy Core: the hot paths (enqueue, claim, progress, complete) run once or more
per chat message, and Core avoids the ORM's per-statement bookkeeping."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlalchemy.sql.elements import ColumnElement

from bot.records import ConversationKey, JobStatus
from storage.schema import (
    ChannelSettings,
    Conversation,
    Feedback,
    HandoffFollowup,
    HandoffPing,
    Job,
    JobChunk,
    KbChunk,
    KbCollection,
    KbDocument,
    Message,
    MessageAttachment,
)

PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)

conversations = cast(Table, Conversation.__table__)
messages = cast(Table, Message.__table__)
jobs = cast(Table, Job.__table__)
channel_settings = cast(Table, ChannelSettings.__table__)
feedback = cast(Table, Feedback.__table__)
handoff_pings = cast(Table, HandoffPing.__table__)
job_chunks = cast(Table, JobChunk.__table__)
handoff_followups = cast(Table, HandoffFollowup.__table__)
message_attachments = cast(Table, MessageAttachment.__table__)


def key_filter(key: ConversationKey) -> tuple[ColumnElement[bool], ...]:
    """The conversation with this key."""
    return (
        conversations.c.platform == key.platform,
        conversations.c.workspace == key.workspace,
        conversations.c.channel == key.channel,
        conversations.c.thread == key.thread,
    )


def in_channel(platform: str, workspace: str, channel: str) -> tuple[ColumnElement[bool], ...]:
    """Every conversation of a channel (its threads included)."""
    return (
        conversations.c.platform == platform,
        conversations.c.workspace == workspace,
        conversations.c.channel == channel,
    )


def settings_filter(platform: str, workspace: str, channel: str) -> tuple[ColumnElement[bool], ...]:
    """A channel's settings row."""
    return (
        channel_settings.c.platform == platform,
        channel_settings.c.workspace == workspace,
        channel_settings.c.channel == channel,
    )


kb_collections = cast(Table, KbCollection.__table__)
kb_documents = cast(Table, KbDocument.__table__)
kb_chunks = cast(Table, KbChunk.__table__)
