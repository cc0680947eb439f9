"""Discord text both ways: what users write -> the text the core stores, and reply text -> content.

Moved out of ``adapters.discord`` (mirroring ``adapters.slack_format``).
"""

from __future__ import annotations

import re

import discord

from bot import texts

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
CHANNEL_MENTION = re.compile(r"<#(\d+)>")
CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")


def render_text(message: discord.Message, my_id: int) -> str:
    guild = message.guild
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role for role in message.role_mentions}

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        if user_id == my_id:
            return ""
        return "@" + users.get(user_id, "user")

    def role(match: re.Match[str]) -> str:
        found = roles.get(int(match.group(1)))
        if found is None and guild is not None:
            found = guild.get_role(int(match.group(1)))
        if found is not None and is_my_role(found, my_id):
            return ""
        return "@" + (found.name if found is not None else "role")

    def channel(match: re.Match[str]) -> str:
        found = guild.get_channel_or_thread(int(match.group(1))) if guild else None
        return "#" + (found.name if found is not None else "channel")

    text = USER_MENTION.sub(user, message.content)
    text = ROLE_MENTION.sub(role, text)
    text = CHANNEL_MENTION.sub(channel, text)
    text = CUSTOM_EMOJI.sub(r":\1:", text)
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    notes = [
        texts.DISCORD_ATTACHMENT.format(
            name=attachment.filename, kind=attachment.content_type or "unknown type"
        )
        for attachment in message.attachments
    ]
    notes += [texts.DISCORD_STICKER.format(name=sticker.name) for sticker in message.stickers]
    return "\n".join(part for part in [text, *notes] if part)


def content(text: str) -> str:
    """Discord refuses empty messages."""
    return text if text.strip() else texts.DISCORD_EMPTY_REPLY


def is_my_role(role: discord.Role, my_id: int) -> bool:
    tags = role.tags
    return tags is not None and tags.bot_id == my_id
