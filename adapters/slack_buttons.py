"""The buttons under every Slack answer: Slack's ``feedback_buttons`` (in a ``context_actions``
block) and a "Talk to a human" button (in an ``actions`` block), and what their clicks do.

- A 👍/👎 click (``block_actions``, action ``solarbot_feedback``, value ``positive``/``negative``) is
  stored exactly like the 👍/👎 reaction (``IntakePort.reaction``, the ``feedback`` table, one
  rating per person and answer, the latest wins), so ``solarbot report`` counts both alike; a
  repeated click or a replayed payload changes nothing.
- A "Talk to a human" click (action ``solarbot_handoff``) by the asker or an admin hands the
  conversation over through ``IntakePort.ask_for_human``, as Discord's button does (its turn is the
  first ``SOLARBOT_HANDOFF_KEYWORDS`` entry: the same turn stored, the same ping, the same limits);
  its dedupe key is the answer and the clicker, so repeats and replays hand over once. Anyone
  else is told privately that they cannot.

The answer is identified by the clicked message (``container.message_ts`` and ``channel_id`` of
the payload, looked up among the bot's recorded replies with ``Repository.reply_origin``), never by
an id the client sends: a click on anything but a finished bot reply does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextActionsBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
)

from bot import texts
from bot.dedupe import dedupe_key
from bot.delivery import IntakePort
from bot.errors import InvalidIncomingError
from bot.records import AnswerRecord, Incoming

log = logging.getLogger(__name__)

FEEDBACK_ACTION = "solarbot_feedback"
HANDOFF_ACTION = "solarbot_handoff"
POSITIVE = "positive"
NEGATIVE = "negative"
# A click's value as the reaction it stands for (bot.intake.rating_of reads Slack's names).
_AS_REACTION = {POSITIVE: "+1", NEGATIVE: "-1"}
SECTION_LIMIT = 3000  # characters of a section block's text


def answer_blocks(*, handoff: bool) -> list[dict[str, Any]]:
    """The blocks every answer ends with: 👍/👎 feedback buttons, and (``handoff``: the handoff is
    on) the "Talk to a human" button."""
    feedback = FeedbackButtonsElement(
        action_id=FEEDBACK_ACTION,
        positive_button=FeedbackButtonObject(
            text=texts.SLACK_FEEDBACK_GOOD,
            accessibility_label=texts.SLACK_FEEDBACK_GOOD,
            value=POSITIVE,
        ),
        negative_button=FeedbackButtonObject(
            text=texts.SLACK_FEEDBACK_BAD,
            accessibility_label=texts.SLACK_FEEDBACK_BAD,
            value=NEGATIVE,
        ),
    )
    blocks = [ContextActionsBlock(elements=[feedback]).to_dict()]
    if handoff:
        button = ButtonElement(
            text=texts.SLACK_HANDOFF_BUTTON, action_id=HANDOFF_ACTION, value="handoff"
        )
        blocks.append(ActionsBlock(elements=[button]).to_dict())
    return blocks


def mrkdwn_sections(text: str) -> list[dict[str, Any]]:
    """``text`` (mrkdwn) as section blocks (a message with blocks shows them, not its text),
    cut at line breaks to Slack's 3,000 characters per section."""
    sections: list[dict[str, Any]] = []
    rest = text or "…"
    while rest:
        if len(rest) <= SECTION_LIMIT:
            part, rest = rest, ""
        else:
            at = rest.rfind("\n", 1, SECTION_LIMIT)
            at = at if at > 0 else SECTION_LIMIT
            part, rest = rest[:at], rest[at:].lstrip("\n")
        sections.append({"type": "section", "text": {"type": "mrkdwn", "text": part}})
    return sections


@dataclass(frozen=True, kw_only=True)
class Click:
    """Who clicked which answer (from the ``block_actions`` payload)."""

    user: str
    workspace: str
    channel: str
    message_ts: str
    value: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Click | None:
        """The click in a ``block_actions`` payload; None for any other shape (nothing is
        trusted to be of the type Slack documents)."""
        container = _mapping(body.get("container"))
        actions = body.get("actions")
        action = _mapping(actions[0]) if isinstance(actions, list) and actions else {}
        user_record = _mapping(body.get("user"))
        user = user_record.get("id")
        workspace = _mapping(body.get("team")).get("id") or user_record.get("team_id")
        channel = container.get("channel_id") or _mapping(body.get("channel")).get("id")
        message_ts = container.get("message_ts") or _mapping(body.get("message")).get("ts")
        value = action.get("value")
        fields = (user, workspace, channel, message_ts)
        if not action or not all(isinstance(f, str) and f for f in fields):
            return None
        if container.get("is_ephemeral") or not isinstance(value, str):
            return None  # ephemeral answers are not stored as messages
        return cls(
            user=str(user),
            workspace=str(workspace),
            channel=str(channel),
            message_ts=str(message_ts),
            value=value,
        )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(kw_only=True)
class SlackButtons:
    """The click handlers, registered on the adapter's bolt app (``register``)."""

    platform: str
    intake: Callable[[], IntakePort]
    allowed: Callable[[str, str], bool]
    is_bot: Callable[[str], Awaitable[bool]]
    author_name: Callable[[str], Awaitable[str]]
    admins: frozenset[str]
    handoff_keyword: str  # "" = handoff off: no button, clicks on old answers do nothing
    command: str  # the slash command, for "``/solar resume`` brings me back"

    def register(self, app: AsyncApp) -> None:
        app.action(FEEDBACK_ACTION)(self.on_feedback)
        app.action(HANDOFF_ACTION)(self.on_handoff)

    async def _click(self, body: dict[str, Any]) -> Click | None:
        click = Click.of(body)
        if click is None or not self.allowed(click.workspace, click.channel):
            return None
        if await self.is_bot(click.user):
            return None
        return click

    async def on_feedback(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        click = await self._click(body)
        emoji = _AS_REACTION.get(click.value) if click is not None else None
        if click is None or emoji is None:
            return
        job = await self.intake().reaction(
            platform=self.platform,
            workspace=click.workspace,
            channel=click.channel,
            message_id=click.message_ts,
            user_id=click.user,
            emoji=emoji,
            added=True,
        )
        if job is None:
            log.info("a feedback click on %s is on no answer of ours", click.message_ts[:40])

    async def on_handoff(self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        click = await self._click(body)
        if click is None or not self.handoff_keyword:
            return
        intake = self.intake()
        origin = await asyncio.to_thread(
            intake.repository.reply_origin,
            platform=self.platform,
            workspace=click.workspace,
            channel=click.channel,
            message_id=click.message_ts,
        )
        if origin is None:
            log.info("a handoff click on %s is on no answer of ours", click.message_ts[:40])
            return
        if click.user != origin.asker_id and click.user not in self.admins:
            notice = texts.SLACK_HANDOFF_NOT_YOURS.format(keyword=self.handoff_keyword)
            await respond(text=notice, response_type="ephemeral", replace_original=False)
            return
        if await asyncio.to_thread(intake.repository.stays_silent, origin.conversation):
            # Handed over already (or switched off): say so to the clicker only.
            waiting = texts.HANDOFF_WAITING.format(command=f"{self.command} resume")
            await respond(text=waiting, response_type="ephemeral", replace_original=False)
            return
        try:
            incoming = self._handoff_message(click, origin, await self.author_name(click.user))
        except InvalidIncomingError as exc:
            log.info("ignored a handoff click: %s", exc)
            return
        await intake.ask_for_human(incoming)

    def _handoff_message(self, click: Click, origin: AnswerRecord, name: str) -> Incoming:
        """The click as the handoff keyword written in the answer's conversation (its turn is
        stored like the typed keyword's); replays and repeats of it share one dedupe key."""
        where = {"channel": origin.conversation.channel, "thread_ts": origin.conversation.thread}
        return Incoming(
            platform=self.platform,
            workspace=origin.conversation.workspace,
            channel=origin.conversation.channel,
            thread=origin.conversation.thread,
            author_id=click.user,
            author_name=name,
            text=self.handoff_keyword,
            message_id=f"handoff-button:{click.message_ts}",
            dedupe_key=dedupe_key(
                self.platform, click.workspace, "handoff-button", str(origin.job_id), click.user
            ),
            reply_target=where,
        )
