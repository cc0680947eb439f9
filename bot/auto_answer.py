"""Auto-answer channels: what happens to a message that nobody addressed to the bot.

A channel's mode (``mode auto|mention``, ``ChannelConfig.answer_mode``) decides whether the bot
answers only where it is mentioned or commanded (``mention``, the default) or every new top-level
message from a person, each in a thread of its own (``auto``). Adapters hand every channel
message from a person (never a bot's, the bot's own, an edit, a join or another system message:
they filter those) that does not mention the bot to ``AutoAnswer.route`` (through
``IntakePort.unaddressed``) and act on the ``Route``:

- ``QUESTION``: answer it. At the top level of an auto channel it starts a thread (Slack: the
  message's own thread; Discord: a thread created from the message) whose conversation is that
  thread's; in such a thread it is the asker's follow-up (the thread's history continues).
- ``HANDED_OFF``: someone other than the asker wrote in an auto thread (a support agent): the
  conversation is handed to a human from now on, recorded as an explicit handoff is (the message is
  stored as a turn with a cancelled job, so a redelivery is recognised, and ``status`` counts the
  conversation), without a ping (a person is already there), until ``resume``. Questions of the
  thread still waiting for their answer (no worker tried them yet) are cancelled: the person
  answers them now.
- ``QUIET``: nothing to do (the conversation is with a human, or the event was seen before). When
  the conversation waits for a human and reminders are on, a message from anyone but the person
  who asked for the human cancels the reminder (``Repository.human_wrote_in_handoff``): adapters
  now see every message of a thread, not only those addressed to the bot.
- ``NOT_AUTO``: no auto-answer matter; the adapter does what it did before (nothing, or its own
  rules such as Discord's threads on the bot's messages).

Decisions are read from the database (``Repository.thread_state``) for each message; the writes
(the handoff) are idempotent per dedupe key, so a replayed or duplicated event gets one answer and
one handoff at most.
"""

from __future__ import annotations

import asyncio
import enum
import logging

from bot.records import AnswerMode, Incoming
from storage.repository import Repository

log = logging.getLogger(__name__)


class Route(enum.StrEnum):
    QUESTION = "question"
    HANDED_OFF = "handed_off"
    QUIET = "quiet"
    NOT_AUTO = "not_auto"


class AutoAnswer:
    def __init__(self, repository: Repository, *, reminders: bool = False) -> None:
        """``reminders``: handoff reminders are on (SOLARBOT_HANDOFF_REMINDER_MINUTES), so a
        person writing in a handed-off conversation may have one to cancel."""
        self._repository = repository
        self._reminders = reminders

    async def route(self, message: Incoming, *, top_level: bool) -> Route:
        """What to do with ``message``, a person's message that does not mention the bot, in the
        conversation where it was written (``message.conversation``: the channel for a top-level
        message, the thread for a message in a thread). ``top_level``: written in the channel,
        not in a thread."""
        key = message.conversation
        state = await asyncio.to_thread(self._repository.thread_state, key)
        auto = state.enabled and state.answer_mode is AnswerMode.AUTO
        if top_level and auto:
            return Route.QUESTION
        if state.handed_off:
            if self._reminders:  # the asker's own messages cancel nothing (the repository)
                cancelled = await asyncio.to_thread(
                    self._repository.human_wrote_in_handoff, key, author_id=message.author_id
                )
                if cancelled:
                    log.info("a person wrote in a handed-off conversation: reminder cancelled")
            return Route.QUIET
        if top_level or not auto or not state.asker:
            return Route.NOT_AUTO
        if message.author_id == state.asker:
            return Route.QUESTION
        result = await asyncio.to_thread(self._repository.enqueue, message, handoff=True)
        if result is None or not result.created:
            return Route.QUIET  # switched off meanwhile, or a redelivery of the agent's message
        waiting = await asyncio.to_thread(self._repository.cancel_waiting_jobs, key)
        log.info(
            "someone else wrote in an auto-answered thread: handed to a human (%d question(s) "
            "waiting there cancelled)",
            waiting,
        )
        return Route.HANDED_OFF
