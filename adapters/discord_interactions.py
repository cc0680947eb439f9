"""What every Discord interaction handler (slash commands, buttons) shares with the adapter.

The adapter decides who may talk to the bot where (its allow-lists, admin roles, DMs); an
interaction handler asks it through ``InteractionPolicy`` instead of importing the adapter, so the
rules for an interaction are exactly the rules for a message. ``place_of`` turns an interaction
into the conversation it belongs to (a thread: its channel's settings, its own history), and
``SeenInteractions`` remembers the interactions this process has handled, so a gateway replay of
the same interaction is not handled twice here (another process is stopped by Discord itself: an
interaction can be acknowledged once).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

REMEMBERED = 10_000


@dataclass(frozen=True, kw_only=True)
class InteractionPolicy:
    """The adapter's rules, as callables: ``is_admin(user, in_guild)``, ``allowed(guild id,
    channel id, user)`` (a thread's parent channel), ``parent_of(channel)`` -> (parent id, is a
    thread), and whether DMs are answered."""

    is_admin: Callable[[discord.abc.User, bool], bool]
    allowed: Callable[[int, int, discord.abc.User], bool]
    parent_of: Callable[[Any], Awaitable[tuple[int, bool]]]
    dms: bool


@dataclass(frozen=True, kw_only=True)
class Place:
    """Where an interaction happened, as the core names conversations."""

    workspace: str
    channel: str  # a thread's parent channel (settings are per channel)
    thread: str  # "" outside threads
    channel_id: int  # the channel or thread the interaction was used in (answers go there)


async def place_of(
    interaction: discord.Interaction[Any], policy: InteractionPolicy
) -> Place | None:
    """The place of ``interaction``, or None where the bot does not answer (the allow-lists, DMs
    switched off): the same rules as for messages."""
    channel_id = interaction.channel_id
    if channel_id is None:
        return None
    guild_id = interaction.guild_id
    if guild_id is None:
        if not policy.dms:
            return None
        return Place(workspace="", channel=str(channel_id), thread="", channel_id=channel_id)
    channel = interaction.channel or interaction.client.get_partial_messageable(
        channel_id, guild_id=guild_id
    )
    parent, is_thread = await policy.parent_of(channel)
    if not policy.allowed(guild_id, parent, interaction.user):
        return None
    return Place(
        workspace=str(guild_id),
        channel=str(parent),
        thread=str(channel_id) if is_thread else "",
        channel_id=channel_id,
    )


def is_admin(interaction: discord.Interaction[Any], policy: InteractionPolicy) -> bool:
    return policy.is_admin(interaction.user, interaction.guild_id is not None)


class SeenInteractions:
    """The ids of the interactions handled lately by this process (a bounded memory)."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._ids: OrderedDict[int, None] = OrderedDict()

    def first_time(self, interaction_id: int) -> bool:
        """True the first time an id is seen; False for a replay."""
        if interaction_id in self._ids:
            return False
        self._ids[interaction_id] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return True


def already_acknowledged(exc: discord.HTTPException) -> bool:
    """Discord refused a callback because the interaction was acknowledged already (a replay
    answered by this or another process)."""
    return exc.code == 40060


class ArrivalOrder:
    """Lets interaction handlers store in the order the interactions arrived, while their
    acknowledgements (the slow part that must happen first) run concurrently: a handler takes a
    ticket on arrival, before its first ``await``, waits for its turn before storing, and
    releases its ticket when done (whatever happened, even without taking its turn). One line
    for all (the buttons' clicks count in the order they were made); ``/ask`` and ``/solar``
    stand in their channel's line instead (``adapters.conversation_order``)."""

    def __init__(self) -> None:
        self._issued = 0
        self._serving = 0
        self._finished: set[int] = set()
        self._advanced = asyncio.Event()

    def ticket(self) -> int:
        ticket = self._issued
        self._issued += 1
        return ticket

    async def turn(self, ticket: int) -> None:
        """Wait until every earlier ticket is released."""
        while self._serving < ticket:
            advanced = self._advanced
            await advanced.wait()

    def release(self, ticket: int) -> None:
        if ticket < self._serving or ticket in self._finished:
            return
        self._finished.add(ticket)
        while self._serving in self._finished:
            self._finished.remove(self._serving)
            self._serving += 1
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()
