"""dedupe keys unambiguous: re-encode stored keys whose components held ':' or '%'

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Keys were ``platform:workspace:channel:message_id`` (or ``slack:workspace:command:trigger``) joined
with ``:`` as they came; ``bot.dedupe.dedupe_key`` now percent-encodes each component. For
components without ``:`` or ``%`` (every Discord and Slack id) both spell the same key, so those
rows need nothing. A stored key with such a component is rewritten (its components read back from
the job's conversation and message), so a redelivery of that event after the upgrade (Slack
retries for minutes, a webhook sender for as long as it likes) is still recognised. Two events
that collided under the old scheme were stored once; nothing can bring the dropped one back.

The encoding is frozen here (a copy of ``bot.dedupe`` at this revision; a test checks they agree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEY_LIMIT = 255


def encoded_key(components: tuple[str, ...]) -> str:
    key = ":".join(c.replace("%", "%25").replace(":", "%3A") for c in components)
    if len(key) <= KEY_LIMIT:
        return key
    return "%h" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def raw_key(components: tuple[str, ...]) -> str:
    return ":".join(components)


def upgrade() -> None:
    _rewrite(old=raw_key, new=encoded_key)


def downgrade() -> None:
    _rewrite(old=encoded_key, new=raw_key)


def _rewrite(
    *, old: Callable[[tuple[str, ...]], str], new: Callable[[tuple[str, ...]], str]
) -> None:
    """For each job whose key is ``old(components)`` for its own components, store
    ``new(components)`` instead, unless another job holds that key already or it does not fit.
    Only jobs whose components hold ``:`` or ``%``, or whose key is long, can differ."""
    connection = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("dedupe_key", sa.String),
        sa.column("conversation_id", sa.Integer),
        sa.column("message_id", sa.Integer),
    )
    conversations = sa.table(
        "conversations",
        sa.column("id", sa.Integer),
        sa.column("platform", sa.String),
        sa.column("workspace", sa.String),
        sa.column("channel", sa.String),
    )
    messages = sa.table(
        "messages", sa.column("id", sa.Integer), sa.column("platform_message_id", sa.String)
    )
    parts = (
        conversations.c.platform,
        conversations.c.workspace,
        conversations.c.channel,
        messages.c.platform_message_id,
    )
    special = sa.or_(
        *(part.contains(char, autoescape=True) for part in parts for char in (":", "%")),
        sa.func.length(jobs.c.dedupe_key) >= 64,
    )
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.dedupe_key, *parts)
        .join(conversations, conversations.c.id == jobs.c.conversation_id)
        .join(messages, messages.c.id == jobs.c.message_id)
        .where(special)
        .order_by(jobs.c.id)
    ).all()
    for row in rows:
        message_id = row.platform_message_id or ""
        for components in (
            (row.platform, row.workspace, row.channel, message_id),
            (row.platform, row.workspace, "command", message_id),
        ):
            if row.dedupe_key != old(components):
                continue
            key = new(components)
            taken = connection.scalar(sa.select(jobs.c.id).where(jobs.c.dedupe_key == key))
            if key != row.dedupe_key and taken is None and len(key) <= KEY_LIMIT:
                connection.execute(
                    sa.update(jobs).where(jobs.c.id == row.id).values(dedupe_key=key)
                )
            break
