"""Discord text both ways: what users write -> the text the core stores, and reply text -> content.

What users write reaches storage and the model exactly as sent (indentation, tabs, trailing spaces,
blank lines, code blocks: byte for byte), apart from this rendering of Discord's markup:

- the bot's own mention (``<@ID>``, ``<@!ID>``, or its managed role ``<@&ID>``) is removed. At the
  start of the message it goes with the spaces and tabs after it and, when nothing else is on its
  line, that line's break (``@solarbot`` + Shift+Enter + pasted code keeps the code's first
  indentation); anywhere else it goes with the spaces and tabs just before it (``thanks
  @solarbot!`` -> ``thanks!``);
- other user and role mentions become ``@display name`` / ``@role name`` (``@user`` / ``@role``
  when Discord did not say who), channel mentions ``#channel name`` (``#channel`` when unknown),
  custom emoji ``:name:``;
- attachments and stickers are noted on lines of their own after the text:
  ``[attachment: name (type)]``, ``[sticker: name]``.

Reply text going out is sent as it is, except that Discord refuses an empty message (``content``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import discord

from bot import texts

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
CHANNEL_MENTION = re.compile(r"<#(\d+)>")
CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_ANY_USER_OR_ROLE_MENTION = re.compile(r"<@!?(\d+)>|<@&(\d+)>")
_REST_OF_MENTION_LINE = re.compile(r"[ \t]*(?:\r?\n)?")


def render_text(message: discord.Message, my_id: int) -> str:
    """The text of ``message`` as the core stores it (see the module docstring)."""
    guild = message.guild
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role for role in message.role_mentions}

    def mine(match: re.Match[str]) -> bool:
        if match.group(1) is not None:
            return int(match.group(1)) == my_id
        found = roles.get(int(match.group(2)))
        if found is None and guild is not None:
            found = guild.get_role(int(match.group(2)))
        return found is not None and is_my_role(found, my_id)

    def user(match: re.Match[str]) -> str:
        return "@" + users.get(int(match.group(1)), "user")

    def role(match: re.Match[str]) -> str:
        found = roles.get(int(match.group(1)))
        if found is None and guild is not None:
            found = guild.get_role(int(match.group(1)))
        return "@" + (found.name if found is not None else "role")

    def channel(match: re.Match[str]) -> str:
        found = guild.get_channel_or_thread(int(match.group(1))) if guild else None
        return "#" + (found.name if found is not None else "channel")

    text = without_own_mentions(message.content, mine)
    text = USER_MENTION.sub(user, text)
    text = ROLE_MENTION.sub(role, text)
    text = CHANNEL_MENTION.sub(channel, text)
    text = CUSTOM_EMOJI.sub(r":\1:", text)
    notes = [
        texts.DISCORD_ATTACHMENT.format(
            name=attachment.filename, kind=attachment.content_type or "unknown type"
        )
        for attachment in message.attachments
    ]
    notes += [texts.DISCORD_STICKER.format(name=sticker.name) for sticker in message.stickers]
    return "\n".join([text, *notes] if text.strip() else notes)


def without_own_mentions(text: str, mine: Callable[[re.Match[str]], bool]) -> str:
    """``text`` without the bot's own mentions (``mine`` tells them from others), each removed with
    the whitespace described in the module docstring; everything else is kept byte for byte."""
    kept: list[str] = []
    position = 0
    leading = True  # nothing but whitespace and the bot's mentions so far
    for match in _ANY_USER_OR_ROLE_MENTION.finditer(text):
        if not mine(match):
            continue
        before = text[position : match.start()]
        if leading and not before.strip():
            rest_of_line = _REST_OF_MENTION_LINE.match(text, match.end())  # always matches
            position = rest_of_line.end() if rest_of_line is not None else match.end()
            continue
        leading = False
        kept.append(before.rstrip(" \t"))
        position = match.end()
    kept.append(text[position:])
    return "".join(kept)


def content(text: str) -> str:
    """Discord refuses empty messages."""
    return text if text.strip() else texts.DISCORD_EMPTY_REPLY


def is_my_role(role: discord.Role, my_id: int) -> bool:
    tags = role.tags
    return tags is not None and tags.bot_id == my_id
