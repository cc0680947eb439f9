"""Buttons under every Discord answer: 👍, 👎 and "Talk to a human".

- **Persistent**: the buttons' custom ids are ``solarbot:<action>:<job id>`` (``up``, ``down``,
  ``human``), the same in every process and after any restart, and views are built with
  ``timeout=None``. Each adapter registers one ``DynamicItem`` class for the ``solarbot:`` ids at
  start-up (``client.add_dynamic_items``: discord.py's persistent registration for ids that carry
  data), so a click on an answer posted before a restart, or by another process, is handled.
- **The custom id names the reply, and nothing else is believed**: the job is read from the
  database and the click must come from one of the messages holding that job's reply, in the
  same server; anything else (an unknown action, a job that does not exist, a message that is not
  that job's) gets a private "not one of mine" and stores nothing.
- **Acknowledged first**: every click is deferred at once (a private "thinking…"; Discord allows
  3 seconds), before anything is read or stored; the outcome then replaces it, privately.
- **Stored like reactions**: 👍/👎 go through ``IntakePort.reaction`` (the table, the one rating
  per person and reply, the report of 👍/👎 reactions); a repeated click changes nothing, another
  rating replaces the person's earlier one. "Talk to a human" goes through
  ``IntakePort.ask_for_human``, as the handoff keyword does (the turn stored, the conversation
  handed over, the support role pinged), and only the asker or an admin may use it. The
  interaction id is the dedupe key: a replayed click is one handoff. Anyone may rate.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import discord

from adapters.discord_interaction_reply import InteractionAnswers, interaction_target
from adapters.discord_interactions import (
    ArrivalOrder,
    InteractionPolicy,
    SeenInteractions,
    already_acknowledged,
    is_admin,
    place_of,
)
from bot import texts
from bot.commands import CommandName
from bot.dedupe import dedupe_key
from bot.delivery import IntakePort
from bot.errors import InvalidIncomingError
from bot.records import AnswerRecord, Incoming

log = logging.getLogger(__name__)

PLATFORM = "discord"
PREFIX = "solarbot:"
TEMPLATE = r"solarbot:(?P<rest>.*)"  # every id of ours; the rest is checked by ``parse_custom_id``
_CUSTOM_ID = re.compile(r"(?P<action>up|down|human):(?P<job>[1-9][0-9]{0,18})")
RATINGS = {"up": "👍", "down": "👎"}


def custom_id(action: str, job_id: int) -> str:
    return f"{PREFIX}{action}:{job_id}"


def parse_custom_id(value: str) -> tuple[str, int] | None:
    """(action, job id) of one of our custom ids, or None for anything else."""
    if not value.startswith(PREFIX):
        return None
    found = _CUSTOM_ID.fullmatch(value[len(PREFIX) :])
    if found is None:
        return None
    return found["action"], int(found["job"])


def answer_buttons(job_id: int) -> discord.ui.View:
    """The buttons under the answer of job ``job_id`` (a persistent view: no timeout)."""
    view = discord.ui.View(timeout=None)
    for action, emoji in RATINGS.items():
        view.add_item(
            discord.ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=emoji,
                custom_id=custom_id(action, job_id),
            )
        )
    view.add_item(
        discord.ui.Button(
            style=discord.ButtonStyle.secondary,
            label=texts.DISCORD_BUTTON_HUMAN,
            custom_id=custom_id("human", job_id),
        )
    )
    return view


class ButtonClicks:
    """Handles clicks on the buttons of one adapter."""

    def __init__(
        self, *, intake: IntakePort, policy: InteractionPolicy, answers: InteractionAnswers
    ) -> None:
        self._intake = intake
        self._policy = policy
        self._answers = answers
        self._seen = SeenInteractions()
        self._order = ArrivalOrder()

    def item_class(self) -> type[discord.ui.DynamicItem[discord.ui.Button[Any]]]:
        """The ``DynamicItem`` to register with ``client.add_dynamic_items``: every ``solarbot:``
        button, whatever it says after that, comes here."""
        clicks = self

        class AnswerButton(
            discord.ui.DynamicItem[discord.ui.Button[Any]],
            template=TEMPLATE,
        ):
            def __init__(self, value: str) -> None:
                super().__init__(discord.ui.Button(custom_id=value))

            @classmethod
            async def from_custom_id(
                cls,
                interaction: discord.Interaction[Any],
                item: discord.ui.Item[Any],
                match: re.Match[str],
                /,
            ) -> AnswerButton:
                return cls(match.string)

            async def callback(self, interaction: discord.Interaction[Any]) -> None:
                await clicks.click(interaction, self.custom_id)

        return AnswerButton

    async def click(self, interaction: discord.Interaction[Any], value: str) -> None:
        """Acknowledge, then (in the order the clicks arrived: 👍 then 👎 leaves 👎) do what
        the button says, then tell the clicker privately."""
        if not self._seen.first_time(interaction.id):
            return
        ticket = self._order.ticket()
        try:
            await self._click(interaction, value, ticket)
        finally:
            self._order.release(ticket)

    async def _click(self, interaction: discord.Interaction[Any], value: str, ticket: int) -> None:
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as exc:
            if already_acknowledged(exc):
                return  # a replay: whoever acknowledged it handles it
            raise
        message = interaction.message
        channel_id = interaction.channel_id or (message.channel.id if message else 0)
        target = {
            **interaction_target(
                channel_id=channel_id,
                application_id=interaction.application_id,
                token=interaction.token,
                private=True,
            ),
            "message_id": str(message.id) if message is not None else "",
        }
        await self._order.turn(ticket)
        try:
            text = await self._outcome(interaction, value, target)
        except Exception:
            log.exception("discord: a button click failed")
            text = texts.FAILED_REPLY
        self._order.release(ticket)  # telling the clicker need not hold up the next click
        if text:
            await self._answers.answer(target, text)

    async def _outcome(
        self, interaction: discord.Interaction[Any], value: str, target: dict[str, str]
    ) -> str:
        """What the click did, for the clicker ("" when the handoff notice answered already)."""
        parsed = parse_custom_id(value)
        answer = await self._answer(interaction, parsed)
        if parsed is None or answer is None:
            log.info("discord: a click on an unknown button (%r) stored nothing", value[:100])
            return texts.DISCORD_BUTTON_UNKNOWN
        place = await place_of(interaction, self._policy)
        if place is None:
            return texts.DISCORD_NOT_HERE
        action = parsed[0]
        user = interaction.user
        if action in RATINGS:
            assert interaction.message is not None
            job = await self._intake.reaction(
                platform=PLATFORM,
                workspace=answer.conversation.workspace,
                message_id=str(interaction.message.id),
                user_id=str(user.id),
                emoji=RATINGS[action],
                added=True,
            )
            if job is None:
                return texts.DISCORD_BUTTON_NOT_YET  # the reply is not recorded as done yet
            return texts.DISCORD_BUTTON_RATED[action]
        if str(user.id) != answer.asker_id and not is_admin(interaction, self._policy):
            return texts.DISCORD_BUTTON_HUMAN_ASKER_ONLY
        return await self._hand_off(interaction, answer, target)

    async def _answer(
        self, interaction: discord.Interaction[Any], parsed: tuple[str, int] | None
    ) -> AnswerRecord | None:
        """The reply the button names, if the click came from one of its messages here."""
        message = interaction.message
        if parsed is None or message is None:
            return None
        answer = await asyncio.to_thread(self._intake.repository.answer_of, parsed[1])
        if answer is None or answer.conversation.platform != PLATFORM:
            return None
        if answer.conversation.workspace != str(interaction.guild_id or ""):
            return None
        if str(message.id) not in answer.message_ids:
            return None
        return answer

    async def _hand_off(
        self, interaction: discord.Interaction[Any], answer: AnswerRecord, target: dict[str, str]
    ) -> str:
        conversation = answer.conversation
        try:
            incoming = Incoming(
                platform=PLATFORM,
                workspace=conversation.workspace,
                channel=conversation.channel,
                thread=conversation.thread,
                author_id=str(interaction.user.id),
                author_name=interaction.user.display_name,
                text=texts.DISCORD_BUTTON_HUMAN_TURN,
                message_id=str(interaction.id),
                dedupe_key=dedupe_key(PLATFORM, "interaction", str(interaction.id)),
                reply_target=target,
            )
        except InvalidIncomingError:
            return texts.DISCORD_BUTTON_UNKNOWN
        result = await self._intake.ask_for_human(incoming)
        if result is None:
            return texts.CHANNEL_DISABLED
        if result.refused is not None:  # the rate limits: told (privately) by the intake
            if not self._answers.was_answered(interaction.token):
                await self._answers.withdraw(target)  # told already within the window
            return ""
        if result.handoff and result.created:
            return ""  # the handoff notice answered the click (``post_handoff``)
        if result.handoff:
            return texts.HANDOFF_WAITING.format(command=f"/solar {CommandName.RESUME.value}")
        return texts.DISCORD_BUTTON_UNKNOWN  # the platform hands nothing over
