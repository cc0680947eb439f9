"""What the Discord tests share: the home server the fake Discord serves, and one running service
(the real discord.py client, intake, SQLite queue and worker) around it.

``home_discord`` starts tests/support/discord_fake.py with the server ``GUILD`` (roles
``MEMBER_ROLE`` and ``ADMIN_ROLE``, the latter with Manage Server), its channels ``GENERAL`` and
``RANDOM``, the thread ``THREAD`` in ``GENERAL``, and (unless ``elsewhere=False``) a second server
``OTHER_GUILD`` with the channel ``ELSEWHERE``; discord.py is pointed at it. ``start_rig`` starts
the service against it with fast timings (``FAST``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.discord import DiscordAdapter, DiscordOptions
from bot.generation.fake import FakeEngine
from bot.limits import Limits
from bot.records import ConversationKey
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.rig import ServiceRig, quick_worker_options

GUILD, OTHER_GUILD = 10, 30
GENERAL, RANDOM, THREAD, ELSEWHERE = 100, 101, 102, 300
DM = 700
MEMBER_ROLE, ADMIN_ROLE = 20, 21
BOT_ROLE = GUILD + 1  # the bot's managed role (tests/support/discord_fake.py)
MANAGE_GUILD = 1 << 5  # the Manage Server permission
MENTION = f"<@{BOT_ID}>"
FAST = {
    "edit_interval": 0.05,
    "typing_interval": 0.2,
    "queue_notice_after": 0.0,
    "status_poll": 0.05,
    "guild_ready_timeout": 0.01,
    "ready_timeout": 10.0,
}


@contextlib.asynccontextmanager
async def home_discord(
    monkeypatch: pytest.MonkeyPatch, *, elsewhere: bool = True
) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_guild(
        GUILD,
        "home",
        roles={MEMBER_ROLE: "members", ADMIN_ROLE: "admins"},
        permissions={ADMIN_ROLE: MANAGE_GUILD},
    )
    fake.add_channel(GUILD, GENERAL, "general")
    fake.add_channel(GUILD, RANDOM, "random")
    fake.add_thread(GUILD, GENERAL, THREAD, "a thread")
    if elsewhere:
        fake.add_guild(OTHER_GUILD, "elsewhere")
        fake.add_channel(OTHER_GUILD, ELSEWHERE, "elsewhere")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    try:
        yield fake
    finally:
        await fake.close()


@dataclass(kw_only=True)
class Rig(ServiceRig[DiscordAdapter, FakeEngine]):
    """The service rig around the real discord.py client, with the fake Discord it talks to."""

    fake: FakeDiscord

    async def until(
        self, condition: Callable[[], bool], *, within: float = 15.0, poll: float = 0.01
    ) -> None:
        await super().until(condition, within=within, poll=poll)

    def stored(self, channel: int, *, thread: int = 0, guild: int = GUILD) -> list[tuple[str, str]]:
        key = ConversationKey(
            platform="discord",
            workspace=str(guild) if guild else "",
            channel=str(channel),
            thread=str(thread) if thread else "",
        )
        return [(m.role.value, m.text) for m in self.repository.messages(key)]

    def replies(self, channel: int) -> list[str]:
        return [m["content"] for m in self.fake.bot_messages(channel)]

    async def stop(self, *, drain: float = 2.0) -> None:
        await super().stop(drain=drain)


async def start_rig(
    fake: FakeDiscord,
    url: str,
    *,
    engine: FakeEngine | None = None,
    concurrency: int = 4,
    lease_seconds: float = 5.0,
    handoff_keywords: tuple[str, ...] = (),
    limits: Limits | None = None,
    **adapter_options: Any,
) -> Rig:
    return await Rig.start(
        DiscordAdapter(DiscordOptions(token=fake.token, **{**FAST, **adapter_options})),
        repository=Repository.open(url),
        engine=engine or FakeEngine(delay_per_chunk=0.002),
        options=quick_worker_options(
            max_new_tokens=2000, concurrency=concurrency, lease_seconds=lease_seconds
        ),
        limits=limits,
        handoff_keywords=handoff_keywords,
        fake=fake,
    )


async def command(
    rig: Rig, channel: int, text: str, *, roles: tuple[int, ...] = (), reply_to_wait: bool = True
) -> str:
    """``@solarbot TEXT`` by a member with ``roles``; returns the bot's answer to it."""
    before = len(rig.replies(channel))
    await rig.fake.user_message(channel, f"{MENTION} {text}", mentions=(BOT_ID,), roles=roles)
    if not reply_to_wait:
        return ""
    await rig.until(lambda: len(rig.replies(channel)) > before)
    return rig.replies(channel)[before]
