"""Answers to Discord interactions (``/ask``, ``/solar ...``) over the interaction's webhook.

An application command is acknowledged at once with a deferred response ("solarbot is thinking…",
ephemeral for ``/ask private:True`` and the ``/solar`` sub-commands); the answer then goes through
the interaction's webhook, with the interaction token and no gateway:

- the first message of the answer edits the original response
  (``PATCH /webhooks/{app}/{token}/messages/@original``), later parts are follow-up messages
  (``POST /webhooks/{app}/{token}``) carrying the same ephemeral flag, edits go to
  ``/webhooks/{app}/{token}/messages/{id}``;
- ``InteractionReply`` is the same ``StreamedReply`` as a channel reply (throttled edits, 2000
  character parts with balanced code fences, an earlier attempt's messages continued), so the
  worker streams an interaction answer exactly as it streams a mention's;
- the job's ``reply_target`` holds what the worker needs: the channel, the application id, the
  interaction token and whether the answer is private (``interaction_target``). Interaction tokens
  live 15 minutes: a public answer whose token expired (the question waited longer) is posted in
  the channel instead; a private one cannot be, and fails like any undeliverable reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import discord
from discord.http import Route, handle_message_parameters

from adapters.discord_errors import delivery_error
from adapters.streaming import MessageGone, StreamedReply
from bot import texts
from bot.delivery import NOTICE_TO, IntakePort, ReplyTarget
from bot.errors import DeliveryError
from bot.records import Incoming, JobStatus
from bot.splitting import split_message

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
EPHEMERAL = 1 << 6  # the message flag: only the user who ran the command sees it
INVALID_WEBHOOK_TOKEN = 50027  # Discord's error code once an interaction token has expired
_NO_PINGS = discord.AllowedMentions.none()

# reply_target keys of an interaction answer (besides "channel_id").
TOKEN = "interaction_token"
APPLICATION = "application_id"
PRIVATE = "private"  # "1": ephemeral


def interaction_target(
    *, channel_id: int, application_id: int, token: str, private: bool
) -> dict[str, str]:
    """The ``reply_target`` of an answer to an interaction."""
    return {
        "channel_id": str(channel_id),
        APPLICATION: str(application_id),
        TOKEN: token,
        PRIVATE: "1" if private else "",
    }


def is_interaction(reply_target: Mapping[str, str]) -> bool:
    return bool(reply_target.get(TOKEN))


def is_private(reply_target: Mapping[str, str]) -> bool:
    return reply_target.get(PRIVATE) == "1"


def token_expired(exc: BaseException) -> bool:
    """Discord refused the interaction token: it is older than 15 minutes."""
    return isinstance(exc, discord.HTTPException) and (
        exc.code == INVALID_WEBHOOK_TOKEN or exc.status == 401
    )


class InteractionWebhook:
    """The webhook of one interaction: the original response and follow-ups, over the bot's
    REST client (its rate limits and retries)."""

    def __init__(self, http: discord.http.HTTPClient, reply_target: Mapping[str, str]) -> None:
        self._http = http
        self.application_id = int(reply_target[APPLICATION])
        self._token = reply_target[TOKEN]
        self.private = is_private(reply_target)

    def __repr__(self) -> str:  # never show the token
        return f"InteractionWebhook(application={self.application_id}, private={self.private})"

    def _route(self, method: str, suffix: str = "") -> Route:
        return Route(
            method,
            "/webhooks/{webhook_id}/{webhook_token}" + suffix,
            webhook_id=self.application_id,
            webhook_token=self._token,
        )

    def _message(self, message_id: str) -> str:
        return "/messages/@original" if message_id == "@original" else f"/messages/{message_id}"

    async def edit(
        self,
        message_id: str,
        text: str | None,
        *,
        view: discord.ui.View | None = None,
        allowed_mentions: discord.AllowedMentions = _NO_PINGS,
    ) -> dict[str, Any]:
        """Edit the original response (``"@original"``) or a follow-up; returns the message."""
        params = handle_message_parameters(
            content=text if text is not None else discord.utils.MISSING,
            view=view if view is not None else discord.utils.MISSING,
            allowed_mentions=allowed_mentions,
        )
        data: dict[str, Any] = await self._http.request(
            self._route("PATCH", self._message(message_id)), json=params.payload
        )
        return data

    async def follow_up(
        self,
        text: str,
        *,
        private: bool | None = None,
        view: discord.ui.View | None = None,
        allowed_mentions: discord.AllowedMentions = _NO_PINGS,
    ) -> dict[str, Any]:
        """A follow-up message (ephemeral like the answer unless ``private`` says otherwise)."""
        flags = discord.MessageFlags()
        flags.ephemeral = self.private if private is None else private
        params = handle_message_parameters(
            content=text,
            flags=flags,
            view=view if view is not None else discord.utils.MISSING,
            allowed_mentions=allowed_mentions,
        )
        data: dict[str, Any] = await self._http.request(
            self._route("POST"), json=params.payload, params={"wait": "true"}
        )
        return data

    async def delete(self, message_id: str) -> None:
        await self._http.request(self._route("DELETE", self._message(message_id)))


class InteractionReply(StreamedReply):
    """One streamed answer to an interaction: its first message is the original response.

    Once Discord refuses the token (older than 15 minutes: the question waited long in the queue)
    a public answer continues as plain messages in the channel; a private one cannot, and fails."""

    def __init__(
        self,
        http: discord.http.HTTPClient,
        target: ReplyTarget,
        *,
        edit_interval: float,
        buttons: discord.ui.View | None = None,
    ) -> None:
        super().__init__(target, limit=MESSAGE_LIMIT, min_interval=edit_interval)
        self._http = http
        self._webhook = InteractionWebhook(http, target.reply_target)
        self._channel_id = int(target.reply_target["channel_id"])
        self._original = target.existing_message_ids[0] if target.existing_message_ids else None
        self._buttons = buttons
        self._expired = False
        self._in_channel: set[str] = set()  # posted in the channel once the token expired

    def _falls_back(self, exc: discord.HTTPException) -> bool:
        """The token expired and the answer is public: continue in the channel."""
        if token_expired(exc) and not self._webhook.private:
            if not self._expired:
                log.info(
                    "job %s: interaction token expired; answering in the channel",
                    self.target.job_id,
                )
            self._expired = True
            return True
        return False

    async def post(self, text: str) -> str:
        if not self._expired:
            try:
                if self._original is None:
                    data = await self._webhook.edit("@original", text)
                    self._original = str(data["id"])
                else:
                    data = await self._webhook.follow_up(text)
                return str(data["id"])
            except discord.HTTPException as exc:
                if not self._falls_back(exc):
                    raise
        sent = await self._http.send_message(
            self._channel_id,
            params=handle_message_parameters(content=text, allowed_mentions=_NO_PINGS),
        )
        self._in_channel.add(str(sent["id"]))
        return str(sent["id"])

    def _address(self, message_id: str) -> str:
        return "@original" if message_id == self._original else message_id

    async def edit(
        self, message_id: str, text: str | None, *, view: discord.ui.View | None = None
    ) -> None:
        """Replace a message's text (None: keep it) and, given ``view``, its buttons."""
        try:
            if message_id in self._in_channel:
                await self._http.edit_message(
                    self._channel_id,
                    int(message_id),
                    params=handle_message_parameters(
                        content=text if text is not None else discord.utils.MISSING,
                        view=view if view is not None else discord.utils.MISSING,
                        allowed_mentions=_NO_PINGS,
                    ),
                )
            elif self._expired:
                raise MessageGone(message_id)  # no longer editable: posted again in the channel
            else:
                await self._webhook.edit(self._address(message_id), text, view=view)
        except discord.NotFound as exc:
            raise MessageGone(message_id) from exc
        except discord.HTTPException as exc:
            if self._falls_back(exc):
                raise MessageGone(message_id) from exc
            raise

    async def discard(self, message_id: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            if message_id in self._in_channel:
                await self._http.delete_message(self._channel_id, int(message_id))
            else:
                await self._webhook.delete(self._address(message_id))

    async def finish(self, text: str) -> tuple[str, ...]:
        ids = tuple(await super().finish(text))
        if self._buttons is not None and ids:
            # The buttons go under the last part, once the answer is complete (a part that
            # can no longer be edited keeps the answer without them).
            with contextlib.suppress(MessageGone):
                await self._call(self.edit(ids[-1], None, view=self._buttons))
        return ids

    def delivery_error(self, exc: Exception) -> DeliveryError:
        return delivery_error(exc)


class InteractionAnswers:
    """Answers to interactions that are no streamed reply (sub-commands, notices, refusals);
    remembers (bounded) which interactions this process answered."""

    def __init__(self, http: discord.http.HTTPClient, *, remember: int = 10_000) -> None:
        self._http = http
        self._remember = remember
        self._answered: OrderedDict[str, None] = OrderedDict()

    def was_answered(self, token: str) -> bool:
        return token in self._answered

    def _mark(self, reply_target: Mapping[str, str]) -> None:
        self._answered[reply_target[TOKEN]] = None
        if len(self._answered) > self._remember:
            self._answered.popitem(last=False)

    async def answer(
        self,
        reply_target: Mapping[str, str],
        text: str,
        *,
        answered: bool = False,
        private_notice: bool = False,
        allowed_mentions: discord.AllowedMentions = _NO_PINGS,
    ) -> list[str]:
        """Answer with ``text`` (split at 2000 characters): the original response (unless
        ``answered``: it holds an answer already), then follow-ups. A notice for one user
        (``private_notice``, or ``NOTICE_TO`` in the target: a refusal) to a public interaction
        removes the public "thinking…" response and tells that user alone. Returns the ids of
        the messages posted."""
        self._mark(reply_target)
        webhook = InteractionWebhook(self._http, reply_target)
        chunks = split_message(text, limit=MESSAGE_LIMIT) or [text]
        posted: list[str] = []
        alone = (private_notice or bool(reply_target.get(NOTICE_TO))) and not webhook.private
        if alone and not answered:
            with contextlib.suppress(discord.NotFound):
                await webhook.delete("@original")
            answered = True
        for chunk in chunks:
            if not answered:
                data = await webhook.edit("@original", chunk, allowed_mentions=allowed_mentions)
                answered = True
            else:
                data = await webhook.follow_up(
                    chunk, private=True if alone else None, allowed_mentions=allowed_mentions
                )
            posted.append(str(data["id"]))
        return posted

    async def withdraw(self, reply_target: Mapping[str, str]) -> None:
        """Remove the "thinking…" response of an interaction that gets no answer."""
        self._mark(reply_target)
        try:
            await InteractionWebhook(self._http, reply_target).delete("@original")
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.debug("discord: could not withdraw an interaction response: %s", exc)


class InteractionWait:
    """While an ``/ask`` waits behind other questions, its "thinking…" response shows its queue
    position ("Queued (position N)…", with links to the channel's top knowledge-base documents
    for the question, as a mention's placeholder shows them), until the worker's reply takes the
    response over (``adopt``)."""

    def __init__(self, http: discord.http.HTTPClient, question: Incoming) -> None:
        self._webhook = InteractionWebhook(http, question.reply_target)
        self._question = question
        self._lock = asyncio.Lock()
        self._adopted = False
        self._shown = ""
        self._help: str | None = None  # knowledge-base links (None: not looked up yet)

    async def adopt(self) -> None:
        """The reply starts: no queue position is shown from now on."""
        async with self._lock:
            self._adopted = True

    async def run(
        self,
        job_id: int,
        intake: IntakePort,
        *,
        notice_after: float,
        poll: float,
        closing: Callable[[], bool],
    ) -> None:
        started = time.monotonic()
        try:
            while not closing():
                async with self._lock:
                    if self._adopted:
                        return
                    status = await intake.job_status(job_id)
                    if status is not JobStatus.QUEUED and status is not JobStatus.RUNNING:
                        return
                    if status is JobStatus.QUEUED and time.monotonic() - started >= notice_after:
                        position = await intake.queue_position(job_id)
                        text = await self._notice(intake, position) if position else ""
                        if text and text != self._shown:
                            await self._webhook.edit("@original", text)
                            self._shown = text
                await asyncio.sleep(poll)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("discord: job %s: queue notice failed: %s", job_id, exc)

    async def _notice(self, intake: IntakePort, position: int) -> str:
        text = texts.DISCORD_QUEUED.format(position=position)
        if self._help is None:
            self._help = ""
            try:
                self._help = await intake.waiting_help(self._question)
            except Exception as exc:  # the question waits all the same
                log.warning("discord: no knowledge-base links for the queue notice: %s", exc)
        if self._help and len(text) + len(self._help) < MESSAGE_LIMIT:
            text = f"{text}\n{self._help}"
        return text
