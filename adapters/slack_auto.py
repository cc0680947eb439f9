"""Slack's side of auto-answer channels (``bot.auto_answer``): channel messages without a mention.

With the ``message.channels`` and ``message.groups`` event subscriptions (scopes
``channels:history``, ``groups:history``) Slack sends every message of the channels the bot is
in. A message that mentions the bot also comes as ``app_mention``, which answers it as before, so
here it is skipped. Of the rest only people's messages count (no subtype, or ``file_share``, or
``thread_broadcast``: a thread reply also sent to the channel); never a bot's (``bot_id``, a bot
user by users.info, Slackbot), the bot's own, an edit or deletion (``message_changed``,
``message_deleted``), a join or leave, a topic change or any other subtype. Each goes
to the core (``IntakePort.unaddressed``), where it was written: the channel (a top-level message)
or its thread (``thread_ts``). A ``QUESTION`` is answered like a mention, in the message's thread
(thread_ts = the message's ts at the top level), where the mention's rules apply (files included);
a message with neither text nor files can hand a thread over, never start one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from adapters.slack_format import from_slack
from bot import texts
from bot.auto_answer import Route
from bot.delivery import IntakePort
from bot.errors import InvalidIncomingError
from bot.records import Incoming

log = logging.getLogger(__name__)

PLATFORM = "slack"
# Subtypes that are still a person writing (every other subtype is a system message or an edit).
PERSON_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})
SLACKBOT = "USLACKBOT"


def mentions(text: str, user_id: str) -> bool:
    """``text`` (Slack's raw text) mentions ``user_id`` (``<@U123>`` or ``<@U123|name>``)."""
    return bool(user_id) and (f"<@{user_id}>" in text or f"<@{user_id}|" in text)


def written_by_a_person(event: Mapping[str, Any], *, bot_user_id: str) -> bool:
    """What the event says: a person's message, not a bot's, the bot's own or a system one."""
    user = str(event.get("user") or "")
    return (
        str(event.get("subtype") or "") in PERSON_SUBTYPES
        and not event.get("bot_id")
        and not event.get("bot_profile")
        and bool(user)
        and user not in (bot_user_id, SLACKBOT)
    )


class SlackAutoAnswer:
    """Routes channel messages without a mention (see the module). The adapter gives it what it
    needs of itself: the allow-lists, users.info's bot check and names, and how a question is
    answered in its thread."""

    def __init__(
        self,
        *,
        allowed: Callable[[str, str], bool],
        is_bot: Callable[[str], Awaitable[bool]],
        author_name: Callable[[str], Awaitable[str]],
        answer_in_thread: Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]],
    ) -> None:
        self._allowed = allowed
        self._is_bot = is_bot
        self._author_name = author_name
        self._answer_in_thread = answer_in_thread

    async def on_channel_message(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        *,
        intake: IntakePort,
        bot_user_id: str,
    ) -> Route | None:
        """Route one ``message`` event of a channel; None when it is not for the core at all."""
        raw = str(event.get("text") or "")
        if not written_by_a_person(event, bot_user_id=bot_user_id) or mentions(raw, bot_user_id):
            return None
        workspace = str(body.get("team_id") or event.get("team") or "")
        channel = str(event.get("channel") or "")
        ts = str(event.get("ts") or "")
        thread_ts = str(event.get("thread_ts") or "")
        user = str(event["user"])
        if not ts or not channel or not self._allowed(workspace, channel):
            return None
        if await self._is_bot(user):
            return None
        top_level = not thread_ts or thread_ts == ts
        thread = "" if top_level else thread_ts
        text = from_slack(raw, bot_user_id=bot_user_id)
        try:
            message = Incoming(
                platform=PLATFORM,
                workspace=workspace,
                channel=channel,
                thread=thread,
                author_id=user,
                author_name=await self._author_name(user),
                text=text or texts.AUTO_NO_TEXT,
                message_id=ts,
                reply_target={"channel": channel, "thread_ts": thread or ts},
            )
        except InvalidIncomingError as exc:  # acknowledged: Slack would send the same again
            log.info("ignored a Slack channel message %s: %s", ts[:40], exc)
            return None
        route = await intake.unaddressed(message, top_level=top_level)
        if route is Route.QUESTION and (text or event.get("files")):
            # Answered like a mention (its rules apply: a file alone may be a question).
            await self._answer_in_thread(event, body)
        return route
