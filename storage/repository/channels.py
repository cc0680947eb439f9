"""Per-channel settings (system prompt, on/off, reply length, language) and human handoff."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from bot.records import AnswerMode, ChannelConfig, ConversationKey, KnowledgeMode
from storage.repository.base import RepositoryBase, serialise_on, upsert
from storage.repository.tables import (
    channel_settings,
    conversations,
    handoff_pings,
    in_channel,
    key_filter,
    settings_filter,
)
from storage.schema import utcnow

CHANNEL_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(ChannelConfig))


class ChannelStore(RepositoryBase):
    # ------------------------------------------------------------------ channel settings

    def channel_config(self, *, platform: str, workspace: str, channel: str) -> ChannelConfig:
        with self._transaction() as connection:
            return _read_config(connection, platform, workspace, channel)

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
        defaults = _column_values(dataclasses.asdict(ChannelConfig()))
        columns = _column_values(changes)
        with self._transaction() as connection:
            connection.execute(
                upsert(connection, channel_settings)
                .values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    **{**defaults, **columns},
                    updated_at=moment,
                )
                .on_conflict_do_update(
                    index_elements=["platform", "workspace", "channel"],
                    set_={**columns, "updated_at": moment},
                )
            )
            return _read_config(connection, platform, workspace, channel)

    def set_channel_config(
        self, *, platform: str, workspace: str, channel: str, config: ChannelConfig
    ) -> None:
        with self._transaction() as connection:
            connection.execute(
                delete(channel_settings).where(*settings_filter(platform, workspace, channel))
            )
            connection.execute(
                insert(channel_settings).values(
                    platform=platform,
                    workspace=workspace,
                    channel=channel,
                    **_column_values(dataclasses.asdict(config)),
                    updated_at=utcnow(),
                )
            )

    # ------------------------------------------------------------------ human handoff

    def resume_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """End the handoff of every conversation of a channel (its threads included); returns
        how many were handed to a human."""
        with self._transaction() as connection:
            result = connection.execute(
                update(conversations)
                .where(
                    *in_channel(platform, workspace, channel),
                    conversations.c.handoff_at.is_not(None),
                )
                .values(handoff_at=None)
            )
            return int(result.rowcount)

    def stays_silent(self, key: ConversationKey) -> bool:
        """Whether a message in ``key`` would get no answer: its channel is switched off or the
        conversation is handed to a human (what ``enqueue`` decides, read without storing)."""
        with self._transaction() as connection:
            if not channel_enabled(connection, key.platform, key.workspace, key.channel):
                return True
            handed = connection.scalar(select(conversations.c.handoff_at).where(*key_filter(key)))
            return handed is not None

    def handoffs_waiting(self) -> int:
        """Conversations handed to a human and not resumed yet, everywhere (the metrics)."""
        query = select(func.count(conversations.c.id)).where(
            conversations.c.handoff_at.is_not(None)
        )
        with self._transaction() as connection:
            return int(connection.scalar(query) or 0)

    def handoffs_in_channel(self, *, platform: str, workspace: str, channel: str) -> int:
        """Conversations of a channel (threads included) now handed to a human."""
        with self._transaction() as connection:
            return int(
                connection.scalar(
                    select(func.count(conversations.c.id)).where(
                        *in_channel(platform, workspace, channel),
                        conversations.c.handoff_at.is_not(None),
                    )
                )
                or 0
            )

    # -- handoff pings: how often the support group/role may be pinged ---------------------------

    def claim_handoff_ping(
        self,
        key: ConversationKey,
        *,
        requester: str,
        cooldown_seconds: float,
        workspace_cap: int,
        window_seconds: float,
        now: datetime | None = None,
    ) -> str | None:
        """May the support group/role be pinged for a handoff in ``key`` asked by ``requester``?
        None = yes, and the ping is recorded; else why not: ``"recent"`` (this conversation or
        this asker got a ping within ``cooldown_seconds``) or ``"capped"`` (the workspace had
        ``workspace_cap`` pings within ``window_seconds``). 0 switches either rule off.

        One transaction, serialised per workspace (``serialise_on``), so ingress processes sharing
        the database agree. The requester is stored as a SHA-256 digest; rows older than both
        windows are deleted here."""
        moment = now or utcnow()
        who = hashlib.sha256(f"{key.platform}:{key.workspace}:{requester}".encode()).hexdigest()
        where = (
            handoff_pings.c.platform == key.platform,
            handoff_pings.c.workspace == key.workspace,
        )
        with self._transaction() as connection:
            serialise_on(connection, "handoff", key.platform, key.workspace)
            keep = max(cooldown_seconds, window_seconds)
            connection.execute(
                delete(handoff_pings).where(
                    handoff_pings.c.pinged_at < moment - timedelta(seconds=keep)
                )
            )
            if cooldown_seconds > 0:
                recent = connection.scalar(
                    select(func.count(handoff_pings.c.id)).where(
                        *where,
                        handoff_pings.c.pinged_at > moment - timedelta(seconds=cooldown_seconds),
                        or_(
                            handoff_pings.c.requester == who,
                            and_(
                                handoff_pings.c.channel == key.channel,
                                handoff_pings.c.thread == key.thread,
                            ),
                        ),
                    )
                )
                if recent:
                    return "recent"
            if workspace_cap > 0 and window_seconds > 0:
                in_window = connection.scalar(
                    select(func.count(handoff_pings.c.id)).where(
                        *where,
                        handoff_pings.c.pinged_at > moment - timedelta(seconds=window_seconds),
                    )
                )
                if int(in_window or 0) >= workspace_cap:
                    return "capped"
            connection.execute(
                insert(handoff_pings).values(
                    platform=key.platform,
                    workspace=key.workspace,
                    channel=key.channel,
                    thread=key.thread,
                    requester=who,
                    pinged_at=moment,
                )
            )
            return None


def _read_config(
    connection: Connection, platform: str, workspace: str, channel: str
) -> ChannelConfig:
    row = connection.execute(
        select(
            channel_settings.c.system_prompt,
            channel_settings.c.enabled,
            channel_settings.c.max_reply_chars,
            channel_settings.c.language,
            channel_settings.c.kb_collections,
            channel_settings.c.kb_mode,
            channel_settings.c.answer_mode,
        ).where(*settings_filter(platform, workspace, channel))
    ).first()
    if row is None:
        return ChannelConfig()
    return ChannelConfig(
        system_prompt=row.system_prompt,
        enabled=row.enabled,
        max_reply_chars=row.max_reply_chars,
        language=row.language,
        kb_collections=collections_of(row.kb_collections),
        kb_mode=mode_of(row.kb_mode),
        answer_mode=answer_mode_of(row.answer_mode),
    )


def _column_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """ChannelConfig fields -> channel_settings columns: the collections are stored as their
    names joined by commas (a name holds no comma: ``bot.commands`` checks it), None for none."""
    values = dict(config)
    if "kb_collections" in values:
        names = tuple(values["kb_collections"])
        if any("," in name or not name.strip() for name in names):
            raise ValueError(f"not a collection name list: {names!r}")
        values["kb_collections"] = ",".join(names) or None
    if "kb_mode" in values:
        values["kb_mode"] = KnowledgeMode(values["kb_mode"]).value
    if "answer_mode" in values:
        values["answer_mode"] = AnswerMode(values["answer_mode"]).value
    return values


def collections_of(stored: str | None) -> tuple[str, ...]:
    """The collection names of a ``kb_collections`` column."""
    return tuple(name for name in (stored or "").split(",") if name)


def mode_of(stored: str | None) -> KnowledgeMode:
    """The answering mode of a ``kb_mode`` column (None: the default, assist)."""
    return KnowledgeMode(stored) if stored else KnowledgeMode.ASSIST


def answer_mode_of(stored: str | None) -> AnswerMode:
    """The answering mode of an ``answer_mode`` column (None: the default, mention)."""
    return AnswerMode(stored) if stored else AnswerMode.MENTION


def channel_enabled(connection: Connection, platform: str, workspace: str, channel: str) -> bool:
    """False only when the channel was switched off (no settings row: on)."""
    enabled = connection.scalar(
        select(channel_settings.c.enabled).where(*settings_filter(platform, workspace, channel))
    )
    return enabled is not False


def handed_off(connection: Connection, conversation_id: int) -> bool:
    """Whether the conversation is now with a human (the bot stays quiet there)."""
    return (
        connection.scalar(
            select(conversations.c.handoff_at).where(conversations.c.id == conversation_id)
        )
        is not None
    )


def hand_off(connection: Connection, conversation_id: int, moment: datetime) -> None:
    """Hand the conversation to a human from ``moment`` on."""
    connection.execute(
        update(conversations).where(conversations.c.id == conversation_id).values(handoff_at=moment)
    )
