"""Discord's side of auto-answer channels (``bot.auto_answer``).

The gateway already brings every guild message with its content (the Message Content intent the
adapter asks for). The adapter filters bots, webhooks, its own messages and every message type but
a plain message or a reply, then asks ``DiscordAutoAnswer.consider`` about a person's message in an
allowed channel before its own rules (mentions, replies to the bot, threads of the bot):

- a sub-command (``@solarbot !mode auto``), or a top-level message without text: the adapter's
  rules;
- at the top level: the core says whether the channel answers it (``mode auto``); if so a public
  thread is created from the message (``POST /channels/{id}/messages/{id}/threads``; its id is the
  message's, so a replayed event finds the thread created already, Discord's error 160004, and
  carries on in it) and the question is answered there, without replying to the message (it lives
  in the parent channel). When the thread cannot be created (no permission, a channel without
  threads) the answer is a reply in the channel, as for a mention;
- in a thread, a message that does not mention the bot: the asker's follow-up is answered, someone
  else's (with text or without: someone wrote) hands the thread to a human, and a handed-off
  thread stays quiet (the core decides). Mentions in threads keep the adapter's rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import discord

from adapters.discord_format import render_text
from bot import texts
from bot.auto_answer import Route
from bot.commands import parse_prefixed
from bot.dedupe import dedupe_key
from bot.delivery import IntakePort
from bot.errors import InvalidIncomingError
from bot.records import Incoming
from bot.splitting import truncate_at_word

log = logging.getLogger(__name__)

PLATFORM = "discord"
THREAD_NAME_CHARS = 100  # Discord's limit
THREAD_ARCHIVE_MINUTES: Literal[1440] = 1440  # a day without messages
THREAD_EXISTS = 160004  # "A thread has already been created for this message"


@dataclass(frozen=True, kw_only=True)
class AutoDecision:
    """``handled``: nothing more to do. ``thread_id``: answer in this new thread. ``answer``:
    answer where it was written. Neither: the adapter's own rules decide."""

    handled: bool = False
    thread_id: int = 0
    answer: bool = False


PASS = AutoDecision()


def thread_name(text: str) -> str:
    """A thread's name from the question: its first line, cut at a word (Discord: 1-100)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return truncate_at_word(first, THREAD_NAME_CHARS) or texts.DISCORD_THREAD_NAME


class DiscordAutoAnswer:
    def __init__(self, http: discord.http.HTTPClient, *, command_prefix: str) -> None:
        self._http = http
        self._prefix = command_prefix

    async def consider(
        self,
        message: discord.Message,
        *,
        intake: IntakePort,
        my_id: int,
        channel_id: int,
        thread_id: int,
        addressed: bool,
    ) -> AutoDecision:
        """What to do with a person's guild message (``thread_id`` 0: written at the top level of
        ``channel_id``; ``addressed``: it mentions the bot or replies to it). See the module."""
        guild = message.guild
        text = render_text(message, my_id)
        top_level = not thread_id
        if guild is None or parse_prefixed(text, prefix=self._prefix) is not None:
            return PASS
        if (addressed and not top_level) or (top_level and not text):
            return PASS
        try:
            seen = Incoming(
                platform=PLATFORM,
                workspace=str(guild.id),
                channel=str(channel_id),
                thread=str(thread_id) if thread_id else "",
                author_id=str(message.author.id),
                author_name=message.author.display_name,
                text=text or texts.AUTO_NO_TEXT,  # no text still counts as someone writing
                message_id=str(message.id),
                dedupe_key=dedupe_key(PLATFORM, str(message.id)),
                reply_target={"channel_id": str(message.channel.id), "message_id": str(message.id)},
            )
        except InvalidIncomingError:
            return PASS  # the adapter's own path says why
        route = await intake.unaddressed(seen, top_level=top_level)
        if route is Route.QUESTION:
            if not top_level:  # the asker's follow-up (nothing to answer without text)
                return AutoDecision(answer=True) if text else AutoDecision(handled=True)
            started = await self._start_thread(message, text)
            return AutoDecision(thread_id=started) if started else AutoDecision(answer=True)
        if route is Route.NOT_AUTO or addressed:
            return PASS
        return AutoDecision(handled=True)

    async def _start_thread(self, message: discord.Message, text: str) -> int:
        """A public thread from ``message``; its id (the message's), or 0 when Discord refused."""
        try:
            created = await self._http.start_thread_with_message(
                message.channel.id,
                message.id,
                name=thread_name(text),
                auto_archive_duration=THREAD_ARCHIVE_MINUTES,
                reason="solarbot: mode auto",
            )
        except discord.HTTPException as exc:
            if exc.code == THREAD_EXISTS:
                return message.id  # a replay: the thread is there (its id is the message's)
            log.warning("discord: could not start a thread on %s: %s", message.id, exc)
            return 0
        return int(created["id"])
