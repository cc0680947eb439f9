"""Token usage: what replies cost in the model's tokens, per user and per channel.

A job's cost is the tokens of its prompt (``tokens_in``: the job trace, migration 0002, stored
once the reply is generated) and of its reply (``tokens_out``: stored with the assistant turn,
``messages.token_count``, counted by the worker in the model's tokens). A job counts on the day it
was enqueued, for the author of the message it answers, in its conversation's channel (threads
count with their channel). Jobs without a trace (queued, running, handed to a human, failed before
generating) cost nothing yet; a reply generated but never delivered counts its prompt only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.sql.elements import ColumnElement

from bot.records import Role, UsageLine, UsageReport
from storage.repository.base import RepositoryBase
from storage.repository.tables import conversations, jobs, messages

replies = messages.alias("replies")
_TOKENS_IN = func.coalesce(func.sum(jobs.c.prompt_tokens), 0)
_TOKENS_OUT = func.coalesce(func.sum(func.coalesce(replies.c.token_count, 0)), 0)
# The assistant turn that answers a job's message (migration 0012 indexes reply_to_id).
_REPLY = and_(replies.c.reply_to_id == jobs.c.message_id, replies.c.role == Role.ASSISTANT)


class UsageStore(RepositoryBase):
    def tokens_used(self, *, platform: str, workspace: str, author_id: str, since: datetime) -> int:
        """Tokens (prompt + generated) of the replies to ``author_id``'s messages enqueued at or
        after ``since`` (the daily quota). Reads the user's messages of the period by the index
        on (author_id, created_at)."""
        query = (
            select(_TOKENS_IN + _TOKENS_OUT)
            .select_from(messages)
            .join(jobs, jobs.c.message_id == messages.c.id)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .outerjoin(replies, _REPLY)
            .where(
                messages.c.author_id == author_id,
                messages.c.created_at >= since,
                messages.c.role == Role.USER,
                conversations.c.platform == platform,
                conversations.c.workspace == workspace,
                jobs.c.prompt_tokens.is_not(None),
            )
        )
        with self._transaction() as connection:
            return int(connection.scalar(query) or 0)

    def usage(self, *, since: datetime, platform: str | None = None) -> UsageReport:
        """Per-user and per-channel token totals of the jobs enqueued at or after ``since``
        (``platform``: that platform only), most tokens first."""
        filters: list[ColumnElement[bool]] = [
            jobs.c.created_at >= since,
            jobs.c.prompt_tokens.is_not(None),
        ]
        if platform is not None:
            filters.append(conversations.c.platform == platform)
        users = _totals(messages.c.author_id, filters)
        channels = _totals(conversations.c.channel, filters)
        with self._transaction() as connection:
            return UsageReport(
                since=since,
                users=tuple(_line(row) for row in connection.execute(users)),
                channels=tuple(_line(row) for row in connection.execute(channels)),
            )


def _totals(who: ColumnElement[Any], filters: list[ColumnElement[bool]]) -> Select[Any]:
    tokens = _TOKENS_IN + _TOKENS_OUT
    return (
        select(
            conversations.c.platform,
            conversations.c.workspace,
            who.label("who"),
            func.count(jobs.c.id).label("replies"),
            _TOKENS_IN.label("tokens_in"),
            _TOKENS_OUT.label("tokens_out"),
        )
        .select_from(jobs)
        .join(messages, messages.c.id == jobs.c.message_id)
        .join(conversations, conversations.c.id == jobs.c.conversation_id)
        .outerjoin(replies, _REPLY)
        .where(*filters)
        .group_by(conversations.c.platform, conversations.c.workspace, who)
        .order_by(tokens.desc(), conversations.c.platform, conversations.c.workspace, who)
    )


def _line(row: Any) -> UsageLine:
    return UsageLine(
        platform=row.platform,
        workspace=row.workspace,
        who=row.who,
        replies=int(row.replies),
        tokens_in=int(row.tokens_in),
        tokens_out=int(row.tokens_out),
    )
