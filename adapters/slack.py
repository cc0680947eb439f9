"""The Slack adapter: slack-bolt (AsyncApp) ingress, slack_sdk Web API egress.

Ingress (HTTP with a verified signing secret, or Socket Mode with an app token):

- ``/solar QUESTION`` (the command is configurable) is acked at once with a short "thinking"
  message; a placeholder quoting the question is posted in the channel and the answer replaces it,
  streamed with ``chat.update`` (nothing is posted in a channel switched off or a conversation
  waiting for a human: the asker is told privately). ``/solar --private QUESTION`` answers only the asker, through the
  command's response_url. Sub-commands (``help``, ``status``, ``forget``, ``prompt``) are
  ``bot.commands``; the answer is ephemeral.
- ``app_mention`` answers in the thread of the mention (a mention at the top of a channel starts
  the thread, which is then the conversation); ``message.im`` answers in the DM.
- Dedupe keys are the message's ``ts`` (events) or the ``trigger_id`` (commands), so Slack's
  retries (``X-Slack-Retry-Num``) find the job already stored and produce no second answer.
- Messages of one conversation (a thread, a DM, a channel's top level for ``/solar``) are
  handled in the order they came in, other conversations meanwhile (``adapters.slack_arrivals``):
  a message whose files download slowly holds up only the messages after it in its thread.
- Events are stored before Slack gets its answer (bolt's ``process_before_response``): an event
  that cannot be stored (the database is down) is answered with a 500 (HTTP) or not acknowledged
  (Socket Mode), so Slack delivers it again instead of it being lost. A slash command is still
  acked at once; the rest of its handling runs after the acknowledgement, in the background.
- Workspace/channel allowlists; DMs are allowed in allowed workspaces.
- ``reaction_added``/``reaction_removed``: a 👍/👎 on one of the bot's replies is stored as
  feedback on it (and removed with the reaction), unless it comes from a bot or an app
  (``users.info``) or from outside the allowlists.
- Sub-commands and empty-mention hints pass the intake's rate limits; a refusal is told once per
  window and only to its sender (the slash command's ack or response_url, else
  ``chat.postEphemeral``), and the placeholder of a refused ``/solar`` question is deleted.

Egress (``open_reply``/``post_notice``) needs only the bot token, so a worker process can deliver.
Replies longer than ``MESSAGE_LIMIT`` continue in follow-up messages (code fences kept intact by
``bot.splitting``), Markdown is converted to mrkdwn (``adapters.slack_format``), 429s are retried by
the SDK's rate-limit handler honouring Retry-After and edits are throttled (``adapters.streaming``);
what still fails becomes a ``DeliveryError`` for the worker's retry policy. Tokens and the signing
secret are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.attachment_download import (
    AttachmentOptions,
    AttachmentReader,
    slack_file_origins,
    slack_file_refs,
)
from adapters.slack_arrivals import Arrival, SlackArrivals, kept_arrival
from adapters.slack_assistant import SlackAssistant
from adapters.slack_auto import SlackAutoAnswer
from adapters.slack_buttons import SlackButtons, answer_blocks, mrkdwn_sections
from adapters.slack_format import from_slack, to_mrkdwn
from adapters.slack_native_stream import native_surface, open_native_reply, stop_streams
from adapters.slack_request import Refused, bolt_request, verified
from adapters.slack_waiting import WaitingLinks
from adapters.streaming import StreamedReply
from bot import texts
from bot.attachments import question_text
from bot.commands import CommandContext, CommandName, Commands, parse_command
from bot.dedupe import dedupe_key
from bot.delivery import NOTICE_TO, IntakePort, ReplyStream, ReplyTarget
from bot.errors import ConfigError, DeliveryError, InvalidIncomingError
from bot.http_listener import Listener, start_listener
from bot.hygiene import clean_outgoing
from bot.learning import ChatMessage, is_learning
from bot.records import ConversationKey, EnqueueResult, Incoming
from bot.splitting import split_message

log = logging.getLogger(__name__)

PLATFORM = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
MESSAGE_LIMIT = 3000  # characters per message; Slack cuts text at 40,000, blocks fail far earlier
COMMAND_DRAIN_SECONDS = 10.0  # on stop: commands acked but not yet stored get this long
QUESTION_PREVIEW = 300  # characters of a slash-command question quoted above its answer
RATE_LIMIT_RETRIES = 3
# Errors that mean "the bot cannot post here", not "try again".
NOT_IN_CHANNEL_ERRORS = ("not_in_channel", "channel_not_found", "is_archived")

Mode = Literal["http", "socket"]
Streaming = Literal["native", "edit"]  # how thread replies stream (adapters.slack_native_stream)


def rate_limited_client(token: str, *, base_url: str) -> AsyncWebClient:
    handlers: list[AsyncRetryHandler] = [
        AsyncConnectionErrorRetryHandler(),
        AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
    ]
    return AsyncWebClient(token=token, base_url=base_url, timeout=30, retry_handlers=handlers)


def delivery_error(exc: Exception) -> DeliveryError:
    """A Slack client failure as a DeliveryError; a 429 (after the SDK's own retries) carries its
    Retry-After so the worker waits at least that long."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        retry_after: float | None = None
        if response.status_code == 429:
            header = next(
                (v for k, v in response.headers.items() if k.lower() == "retry-after"), None
            )
            value = header[0] if isinstance(header, list) else header
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(value) if value is not None else None
        error = response.get("error") if isinstance(response.data, dict) else None
        return DeliveryError(
            f"Slack API {response.status_code}: {error or 'error'}", retry_after=retry_after
        )
    return DeliveryError(f"Slack request failed: {type(exc).__name__}: {exc}")


class SlackReply(StreamedReply):
    """A reply in a channel, thread or DM: posted, then edited as it grows; split past the limit."""

    def __init__(
        self,
        client: AsyncWebClient,
        target: ReplyTarget,
        *,
        limit: int = MESSAGE_LIMIT,
        min_interval: float = 1.0,
        closing_blocks: Sequence[dict[str, Any]] = (),
    ) -> None:
        where = target.reply_target
        placeholder = where.get("ts", "")
        if placeholder and not target.existing_message_ids:
            # The slash command's "thinking" placeholder becomes the first message of the answer.
            target = dataclasses.replace(target, existing_message_ids=(placeholder,))
        super().__init__(target, limit=limit, min_interval=min_interval)
        self._client = client
        self._channel = where["channel"]
        self._thread = where.get("thread_ts", "")
        self._header = where.get("header", "")
        self._closing = list(closing_blocks)

    async def finish(self, text: str) -> Sequence[str]:
        ids = await super().finish(text)
        if self._closing and ids:
            # The answer ends with the buttons (adapters.slack_buttons): a message with blocks
            # shows them instead of its text, so its text goes into section blocks above them.
            chunks = split_message(text, limit=self.limit) or [text]
            shown = self._text(chunks[-1], first=len(chunks) == 1)
            await self._call(
                self._client.chat_update(
                    channel=self._channel,
                    ts=ids[-1],
                    text=shown,
                    blocks=[*mrkdwn_sections(shown), *self._closing],
                )
            )
        return ids

    def _text(self, chunk: str, *, first: bool) -> str:
        body = to_mrkdwn(chunk)
        return f"{self._header}\n\n{body}" if first and self._header else body

    async def post(self, text: str) -> str:
        first = not self.message_ids
        response = await self._client.chat_postMessage(
            channel=self._channel,
            text=self._text(text, first=first),
            thread_ts=self._thread or None,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def edit(self, message_id: str, text: str) -> None:
        first = bool(self.message_ids) and message_id == self.message_ids[0]
        await self._client.chat_update(
            channel=self._channel, ts=message_id, text=self._text(text, first=first)
        )

    async def discard(self, message_id: str) -> None:
        try:
            await self._client.chat_delete(channel=self._channel, ts=message_id)
        except SlackApiError as exc:
            if exc.response.get("error") != "message_not_found":
                raise

    def delivery_error(self, exc: Exception) -> DeliveryError:
        return delivery_error(exc)


class SlackEphemeralReply:
    """A ``--private`` answer: only the asker sees it. Ephemeral messages cannot be edited, so it is
    sent once, complete, through the command's response_url (chunk by chunk when long)."""

    def __init__(
        self, target: ReplyTarget, *, limit: int = MESSAGE_LIMIT, retry_handlers: Any = None
    ) -> None:
        self._target = target
        self._limit = limit
        self._ids = list(target.existing_message_ids)
        self._webhook = AsyncWebhookClient(
            target.reply_target["response_url"], retry_handlers=retry_handlers
        )

    @property
    def message_ids(self) -> Sequence[str]:
        return tuple(self._ids)

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> Sequence[str]:
        chunks = split_message(text, limit=self._limit) or [text]
        for index, chunk in enumerate(chunks):
            if index < len(self._ids):
                continue  # an earlier attempt sent it
            await send_ephemeral(self._webhook, to_mrkdwn(chunk))
            self._ids.append(f"ephemeral-{self._target.job_id}-{index}")
        return tuple(self._ids)


async def send_ephemeral(webhook: AsyncWebhookClient, text: str) -> None:
    try:
        response = await webhook.send(text=text, response_type="ephemeral")
    except Exception as exc:
        raise DeliveryError(f"Slack response_url failed: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise DeliveryError(f"Slack response_url answered {response.status_code}: {response.body}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlackOptions:
    """Everything the Slack adapter needs (``bot.service`` builds it from the settings). Tokens and
    the signing secret never appear in a repr. Empty id sets = no restriction."""

    bot_token: str = dataclasses.field(repr=False)
    signing_secret: str | None = dataclasses.field(default=None, repr=False)  # mode="http"
    app_token: str | None = dataclasses.field(default=None, repr=False)  # mode="socket"
    mode: Mode = "http"
    host: str = "0.0.0.0"
    port: int = 3000  # 0: any free port (``SlackAdapter.http_port`` says which)
    path: str = "/slack/events"
    command: str = "/solar"
    allowed_workspaces: frozenset[str] = frozenset()
    allowed_channels: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()
    support_group: str | None = None  # pinged when someone asks for a human
    api_url: str = DEFAULT_API_URL
    model_id: str = ""  # shown by ``status``
    default_system_prompt: str = ""  # shown by ``prompt`` in a channel without its own
    edit_interval: float = 1.0
    message_limit: int = MESSAGE_LIMIT
    ingress: bool = True  # False: Web API only (a worker process delivering replies)
    # "native": thread replies stream with chat.startStream/appendStream/stopStream in standard
    # Markdown; "edit": every reply is edited in place in mrkdwn (SOLARBOT_SLACK_STREAMING).
    streaming: Streaming = "native"
    # Buttons under every answer (adapters.slack_buttons): 👍/👎, and "Talk to a human" when
    # ``handoff_keyword`` (the first SOLARBOT_HANDOFF_KEYWORDS entry) is set.
    feedback_buttons: bool = True
    handoff_keyword: str = ""
    # Assistant threads (adapters.slack_assistant): greeting, suggested prompts, status, title.
    assistant: bool = True
    suggested_prompts: tuple[tuple[str, str], ...] = texts.SLACK_SUGGESTED_PROMPTS
    status_poll_seconds: float = 1.0  # how often a waiting question's status is checked
    # Files on questions are downloaded (url_private, the bot token) and read; None: not read.
    attachments: AttachmentOptions | None = None


class SlackAdapter:
    def __init__(self, options: SlackOptions) -> None:
        self.options = options
        if options.ingress and options.mode == "http" and not options.signing_secret:
            raise ConfigError(
                "SOLARBOT_SLACK_SIGNING_SECRET: required when SOLARBOT_SLACK_MODE=http "
                "(Slack app > Basic Information > App Credentials)"
            )
        if options.ingress and options.mode == "socket" and not options.app_token:
            raise ConfigError(
                "SOLARBOT_SLACK_APP_TOKEN: required when SOLARBOT_SLACK_MODE=socket "
                "(an xapp- token with the connections:write scope)"
            )
        self._mode = options.mode
        self._ingress = options.ingress
        self._signing_secret = options.signing_secret or ""
        self._host = options.host
        self._port = options.port
        self._path = options.path
        self._command = options.command
        self._allowed_workspaces = options.allowed_workspaces
        self._allowed_channels = options.allowed_channels
        self._admins = options.admin_users
        self._support_group = options.support_group
        self._model_id = options.model_id
        self._default_prompt = options.default_system_prompt
        self._edit_interval = options.edit_interval
        self._limit = options.message_limit
        self._api_url = options.api_url
        self._app_token = options.app_token
        self.client = rate_limited_client(options.bot_token, base_url=options.api_url)
        self.app = AsyncApp(
            client=self.client,
            signing_secret=options.signing_secret or "",
            request_verification_enabled=options.mode == "http",
            # Listeners run before Slack is answered: an event not stored is not acknowledged.
            process_before_response=True,
            logger=logging.getLogger("slack_bolt"),
        )
        self.app.command(options.command)(self._on_command)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.event("reaction_added")(self._on_reaction)
        self.app.event("reaction_removed")(self._on_reaction)
        SlackButtons(
            platform=PLATFORM,
            intake=self._started_intake,
            allowed=self._allowed,
            is_bot=self._is_bot,
            author_name=self._author_name,
            admins=options.admin_users,
            handoff_keyword=options.handoff_keyword,
            command=options.command,
        ).register(self.app)
        self._assistant: SlackAssistant | None = None
        if options.assistant:
            self._assistant = SlackAssistant(
                client=self.client,
                intake=self._started_intake,
                submit=self._on_assistant_message,
                allowed=self._allowed,
                prompts=options.suggested_prompts,
                poll_seconds=options.status_poll_seconds,
            )
            self.app.assistant(self._assistant.middleware)
        self._closing = (
            answer_blocks(handoff=bool(options.handoff_keyword)) if options.feedback_buttons else []
        )
        self._intake: IntakePort | None = None
        self._commands: Commands | None = None
        self._bot_user_id = ""
        self._listener: Listener | None = None
        self._users: dict[str, dict[str, Any]] = {}  # users.info records, by user id
        self._socket: AsyncSocketModeHandler | None = None
        self._background: set[asyncio.Task[None]] = set()  # slash commands after their ack
        self._arrivals = SlackArrivals()  # per-conversation arrival order (adapters.slack_arrivals)
        self._auto = SlackAutoAnswer(  # channel messages without a mention (auto-answer channels)
            allowed=self._allowed,
            is_bot=self._is_bot,
            author_name=self._author_name,
            answer_in_thread=self._on_mention,
        )
        self._waiting_links = WaitingLinks(self.client)  # source links while queued (issue 14)
        self.http_port: int | None = None
        self._files: AttachmentReader | None = None
        if options.attachments is not None and options.ingress:
            self._files = AttachmentReader(
                options=options.attachments,
                bearer=options.bot_token,
                auth_origins=slack_file_origins(options.api_url),
            )

    @property
    def platform(self) -> str:
        return PLATFORM

    def _started_intake(self) -> IntakePort:
        assert self._intake is not None, "start() the adapter first"
        return self._intake

    # ------------------------------------------------------------------ lifecycle

    async def start(self, intake: IntakePort) -> None:
        self._intake = intake
        self._commands = Commands(
            intake.repository,
            command=self._command,
            model_id=self._model_id,
            default_system_prompt=self._default_prompt,
            admin_setting="SOLARBOT_SLACK_ADMIN_USERS",
            prompt_gauge=intake.prompt_gauge,
        )
        try:
            identity = await self.client.auth_test()
        except SlackApiError as exc:
            raise ConfigError(
                f"SOLARBOT_SLACK_BOT_TOKEN: Slack rejected the token ({exc.response.get('error')})"
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"SOLARBOT_SLACK_API_URL: cannot reach Slack at {self._api_url} "
                f"({type(exc).__name__})"
            ) from None
        self._bot_user_id = str(identity.get("user_id") or "")
        if not self._ingress:
            log.info("Slack adapter started for delivery only (no ingress)")
        elif self._mode == "socket":
            await self._start_socket_mode()
        else:
            await self._start_http()

    async def _start_http(self) -> None:
        web_app = web.Application()
        web_app.router.add_post(self._path, self._handle_http)
        self._listener = await start_listener(
            web_app, host=self._host, port=self._port, setting="SOLARBOT_SLACK_PORT"
        )
        self.http_port = self._listener.port
        log.info("Slack HTTP endpoint listening on %s:%s%s", self._host, self.http_port, self._path)

    async def _handle_http(self, request: web.Request) -> web.Response:
        body = await request.read()
        refused = verified(body, request.headers, secret=self._signing_secret)
        checked = refused or bolt_request(body, query=request.query_string, headers=request.headers)
        if isinstance(checked, Refused):
            log.debug("refused a Slack request: %s %s", checked.status, checked.error)
            return web.Response(
                status=checked.status, text=checked.body(), content_type="application/json"
            )
        bolt_response = await self._arrivals.dispatch(
            checked.body, lambda: self.app.async_dispatch(checked)
        )
        return await to_aiohttp_response(bolt_response)

    async def _start_socket_mode(self) -> None:
        assert self._app_token is not None
        handler = AsyncSocketModeHandler(self.app, self._app_token, web_client=self.client)
        listeners = handler.client.socket_mode_request_listeners
        listeners.clear()  # bolt's own handling, wrapped so that it runs in arrival order
        listeners.append(self._socket_request_listener(handler))
        try:
            # Ask for the websocket URL ourselves: a bad app token fails here with one clear line
            # instead of the client's endless reconnect loop.
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
        except SlackApiError as exc:
            await handler.client.close()  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"SOLARBOT_SLACK_APP_TOKEN: Slack refused Socket Mode ({exc.response.get('error')})"
            ) from None
        await handler.connect_async()  # type: ignore[no-untyped-call]
        self._socket = handler
        log.info("Slack Socket Mode connected")

    def _socket_request_listener(
        self, handler: AsyncSocketModeHandler
    ) -> Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]:
        """bolt's Socket Mode handling of an envelope, in its conversation's turn."""

        async def handle(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
            assert isinstance(client, SocketModeClient)  # the aiohttp client bolt's handler made
            payload = request.payload if isinstance(request.payload, dict) else {}
            await self._arrivals.dispatch(payload, lambda: handler.handle(client, request))

        return handle

    async def stop(self) -> None:
        if self._assistant is not None:
            await self._assistant.close()
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._background:  # commands acked but still being stored/answered: let them finish
            _, late = await asyncio.wait(self._background, timeout=COMMAND_DRAIN_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._files is not None:
            await self._files.close()
        await self._waiting_links.close()

    # ------------------------------------------------------------------ ingress

    def _allowed(self, workspace: str, channel: str) -> bool:
        if self._allowed_workspaces and workspace not in self._allowed_workspaces:
            return False
        if channel.startswith("D"):
            return True  # direct messages: allowed in allowed workspaces
        return not self._allowed_channels or channel in self._allowed_channels

    async def _on_command(
        self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond
    ) -> None:
        """Returns (so that Slack gets the ack, within its 3 s) as soon as the handling has acked;
        the rest of it (placeholder, storing, answering) goes on in the background."""
        acked = asyncio.Event()

        async def ack_now(*args: Any, **kwargs: Any) -> None:
            await ack(*args, **kwargs)
            acked.set()

        arrival = kept_arrival()  # its place in the channel's line, taken when it came in
        task = asyncio.create_task(self._handle_command(ack_now, command, respond, arrival))
        if arrival is not None:
            task.add_done_callback(lambda _: arrival.release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        waiting = asyncio.create_task(acked.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if not acked.is_set():
            task.result()  # it failed before its ack: bolt answers 500 and logs the error
        task.add_done_callback(self._command_finished)

    def _command_finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a /%s command failed", self._command.lstrip("/"), exc_info=task.exception())

    async def _handle_command(
        self,
        ack: Callable[..., Awaitable[None]],
        command: dict[str, Any],
        respond: AsyncRespond,
        arrival: Arrival | None = None,
    ) -> None:
        workspace = str(command.get("team_id", ""))
        channel = str(command.get("channel_id", ""))
        user = str(command.get("user_id", ""))
        if not self._allowed(workspace, channel):
            await ack(text=texts.NOT_ALLOWED_HERE)
            return
        parsed = parse_command(from_slack(str(command.get("text", ""))))
        if parsed.name is not CommandName.ASK:
            assert self._commands is not None and self._intake is not None
            refusal = await self._intake.admit_command(
                platform=PLATFORM, workspace=workspace, channel=channel, author_id=user
            )
            if refusal is not None:  # the ack is ephemeral: only the sender sees it
                await (ack() if refusal.quiet else ack(text=to_mrkdwn(refusal.notice)))
                return
            context = CommandContext(
                platform=PLATFORM,
                workspace=workspace,
                channel=channel,
                user_id=user,
                is_admin=user in self._admins,
                admins_configured=bool(self._admins),
            )
            if parsed.name is CommandName.HELP:
                await ack(text=to_mrkdwn(self._commands.help(context)))
                return
            await ack()
            reply = await self._commands.run(parsed, context)
            await respond(text=to_mrkdwn(reply), response_type="ephemeral")
            return
        await ack(text=texts.SLACK_THINKING)
        if arrival is not None:  # acked at once; stored after what came before in the channel
            await arrival.turn()
        response_url = str(command.get("response_url", ""))
        where = {"channel": channel, "thread_ts": "", "response_url": response_url}
        trigger = str(command.get("trigger_id", "")) or response_url
        try:
            incoming = Incoming(
                platform=PLATFORM,
                workspace=workspace,
                channel=channel,
                author_id=user,
                author_name=await self._author_name(user, str(command.get("user_name", ""))),
                text=parsed.argument,
                message_id=trigger,
                dedupe_key=dedupe_key(PLATFORM, workspace, "command", trigger),
                reply_target=where,
            )
        except InvalidIncomingError as exc:
            log.info("refused a /%s question: %s", self._command.lstrip("/"), exc)
            await self._quietly(
                respond(
                    text=texts.MESSAGE_UNREADABLE.format(reason=exc), response_type="ephemeral"
                ),
                "response_url",
            )
            return
        private = parsed.private
        if not private and await self._stays_silent(incoming.conversation):
            # Switched off, or waiting for a human: nothing in the channel, not even the question.
            private = True
        if not private:
            question = parsed.argument
            if len(question) > QUESTION_PREVIEW:
                question = question[: QUESTION_PREVIEW - 1] + "…"
            header = texts.SLACK_ASKED.format(
                user=user, question=to_mrkdwn(clean_outgoing(question))
            )
            try:
                posted = await self.client.chat_postMessage(
                    channel=channel, text=f"{header}\n\n{texts.SLACK_THINKING}"
                )
                where["ts"] = str(posted["ts"])
                where["header"] = header
            except SlackApiError as exc:
                if exc.response.get("error") in NOT_IN_CHANNEL_ERRORS:
                    private = True
                    await respond(text=texts.SLACK_NOT_IN_CHANNEL, response_type="ephemeral")
                else:  # the worker posts the answer without a placeholder
                    log.warning("could not post the placeholder: %s", delivery_error(exc))
        if private:
            where["ephemeral"] = "1"
        try:
            result = await self._submit(dataclasses.replace(incoming, reply_target=where))
        except Exception:
            # Not stored (the database is down?): say so rather than leave "Thinking…" forever.
            log.exception("could not store a /%s question", self._command.lstrip("/"))
            await self._quietly(
                respond(text=texts.FAILED_REPLY, response_type="ephemeral"), "response_url"
            )
            if "ts" in where:
                await self._quietly(
                    self.client.chat_update(
                        channel=channel,
                        ts=where["ts"],
                        text=f"{where['header']}\n\n{texts.FAILED_REPLY}",
                    ),
                    "placeholder",
                )
            return
        self._waiting_links.queued(
            self._intake, dataclasses.replace(incoming, reply_target=where), result
        )
        if result is not None and result.handoff and not result.created:
            waiting = texts.HANDOFF_WAITING.format(command=f"{self._command} resume")
            await respond(text=to_mrkdwn(waiting), response_type="ephemeral")
        if result is None or result.refused or (result.handoff and not result.created):
            # Nothing to answer here: the placeholder quoting the question goes (a refusal was
            # told privately, or not at all when the user was told already).
            if result is None:
                await respond(text=texts.CHANNEL_DISABLED, response_type="ephemeral")
            if "ts" in where:
                await self._quietly(
                    self.client.chat_delete(channel=channel, ts=where["ts"]), "placeholder"
                )

    async def _stays_silent(self, conversation: ConversationKey) -> bool:
        """The channel is switched off or the conversation waits for a human: post nothing."""
        assert self._intake is not None, "start() the adapter first"
        try:
            return await asyncio.to_thread(self._intake.repository.stays_silent, conversation)
        except Exception as exc:  # storing it will fail the same way and say so
            log.warning("could not read the channel's state: %s", type(exc).__name__)
            return False

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        await self._on_user_message(event, body, in_thread=True)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("channel_type") != "im":
            # Mentions come as app_mention; the rest matters to auto-answer channels.
            assert self._intake is not None, "start() the adapter first"
            await self._auto.on_channel_message(
                event, body, intake=self._intake, bot_user_id=self._bot_user_id
            )
            return
        await self._on_user_message(event, body, in_thread=False)

    async def _on_assistant_message(
        self, event: dict[str, Any], body: dict[str, Any]
    ) -> EnqueueResult | None:
        """A person's message in an assistant thread (a DM thread): answered like any DM."""
        return await self._on_user_message(event, body, in_thread=False)

    async def _on_reaction(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """A 👍/👎 (``+1``/``-1``, any skin tone) added to or removed from one of our replies is
        feedback on it; other reactions and reactions on other messages are ignored."""
        item = event.get("item")
        user = str(event.get("user") or "")
        if (
            not isinstance(item, dict)
            or item.get("type") != "message"
            or not user
            or user == self._bot_user_id
        ):
            return
        if is_learning(str(event.get("reaction") or "")):
            await self._learn(event, body, item, user)
            return
        if event.get("item_user") and event.get("item_user") != self._bot_user_id:
            return
        workspace = str(body.get("team_id") or "")
        channel = str(item.get("channel") or "")
        if not self._allowed(workspace, channel):
            return
        if await self._is_bot(user):
            return  # other bots' votes are not feedback (their messages are ignored too)
        assert self._intake is not None, "start() the adapter first"
        await self._intake.reaction(
            platform=PLATFORM,
            workspace=workspace,
            channel=channel,
            message_id=str(item.get("ts") or ""),
            user_id=user,
            emoji=str(event.get("reaction") or ""),
            added=event.get("type") == "reaction_added",
        )

    async def _learn(
        self, event: dict[str, Any], body: dict[str, Any], item: dict[str, Any], user: str
    ) -> None:
        """An admin's 📚 on any message of an allowed channel: the message joins the channel's
        knowledge base (``bot.learning``), linked by its permalink; removing the 📚 takes it
        out. Anyone else's 📚 is only a reaction."""
        workspace = str(body.get("team_id") or "")
        channel = str(item.get("channel") or "")
        ts = str(item.get("ts") or "")
        if user not in self._admins or not ts or not self._allowed(workspace, channel):
            return
        assert self._intake is not None, "start() the adapter first"
        added = event.get("type") == "reaction_added"
        text, author, link = "", "", ""
        if added:
            try:
                found = await self._message(channel, ts)
                if found is None:
                    log.info("could not find the message %s to learn in %s", ts[:40], channel)
                    return
                permalink = await self.client.chat_getPermalink(channel=channel, message_ts=ts)
            except SlackApiError as exc:
                log.warning("could not read a message to learn: %s", delivery_error(exc))
                return
            text = from_slack(str(found.get("text") or ""), bot_user_id=self._bot_user_id)
            author = await self._author_name(str(found.get("user") or ""), "")
            link = str(permalink.get("permalink") or "")
        await self._intake.learn(
            ChatMessage(
                platform=PLATFORM,
                workspace=workspace,
                channel=channel,
                message_id=ts,
                text=text,
                author_name=author,
                link=link,
            ),
            added=added,
        )

    async def _message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The message ``ts`` of ``channel``: at the top level, else in a thread."""
        history = await self.client.conversations_history(
            channel=channel, latest=ts, oldest=ts, inclusive=True, limit=1
        )
        for message in history.get("messages") or []:
            if message.get("ts") == ts:
                return dict(message)
        replies = await self.client.conversations_replies(
            channel=channel, ts=ts, latest=ts, oldest=ts, inclusive=True, limit=1
        )
        for message in replies.get("messages") or []:
            if message.get("ts") == ts:
                return dict(message)
        return None

    async def _on_user_message(
        self, event: dict[str, Any], body: dict[str, Any], *, in_thread: bool
    ) -> EnqueueResult | None:
        if event.get("subtype") not in (None, "file_share"):
            return None  # edits, deletions, joins (a message with files is still a message)
        if event.get("bot_id") or not event.get("user"):
            return None  # other bots (our own messages never get here)
        workspace = str(body.get("team_id") or event.get("team") or "")
        channel = str(event.get("channel", ""))
        if not self._allowed(workspace, channel):
            log.info("ignored a message from %s/%s (not in the allowlist)", workspace, channel)
            return None
        ts = str(event.get("ts", ""))
        thread = str(event.get("thread_ts") or (ts if in_thread else ""))
        text = from_slack(str(event.get("text", "")), bot_user_id=self._bot_user_id)
        refs = slack_file_refs(event) if self._files else ()
        if refs and (seen := await self._seen(workspace, channel, ts)) is not None:
            return seen  # a retry (or twin) of a stored message: its files are not fetched again
        files = await self._files.read_all(refs) if self._files and refs else ()
        text = question_text(text, files)
        if not text:
            here = ConversationKey(
                platform=PLATFORM, workspace=workspace, channel=channel, thread=thread
            )
            if await self._stays_silent(here):
                return None
            # A hint is a post too: it passes the rate limits like a command (told privately).
            assert self._intake is not None, "start() the adapter first"
            user = str(event["user"])
            refusal = await self._intake.admit_command(
                platform=PLATFORM, workspace=workspace, channel=channel, author_id=user
            )
            if refusal is None:
                await self._quietly(
                    self.client.chat_postMessage(
                        channel=channel, thread_ts=thread or None, text=texts.SLACK_EMPTY_MENTION
                    ),
                    "empty-mention hint",
                )
            elif not refusal.quiet:
                where = {"channel": channel, "thread_ts": thread, NOTICE_TO: user}
                await self._quietly(
                    self._tell_privately(where, to_mrkdwn(refusal.notice)), "refusal"
                )
            return None
        try:
            incoming = Incoming(
                platform=PLATFORM,
                workspace=workspace,
                channel=channel,
                thread=thread,
                author_id=str(event["user"]),
                author_name=await self._author_name(str(event["user"])),
                text=text,
                message_id=ts,
                # ``user``: the asker, the recipient of a natively streamed answer.
                reply_target={"channel": channel, "thread_ts": thread, "user": str(event["user"])},
                attachments=files,
            )
        except InvalidIncomingError as exc:  # acknowledged: Slack would send the same again
            log.info("ignored a Slack message %s in %s: %s", ts[:40], channel[:40], exc)
            return None
        result = await self._submit(incoming)
        self._waiting_links.queued(self._intake, incoming, result)
        return result

    async def _seen(self, workspace: str, channel: str, ts: str) -> EnqueueResult | None:
        """The job of the message ``ts`` when it is stored already (``Incoming``'s dedupe key)."""
        assert self._intake is not None, "start() the adapter first"
        key = dedupe_key(PLATFORM, workspace, channel, ts)
        return await asyncio.to_thread(self._intake.repository.job_for_event, key)

    async def _user(self, user: str) -> dict[str, Any] | None:
        """``users.info``'s record of ``user``, asked once per person (at most 10,000 kept) for
        both their name and whether they are a bot; None when the app lacks the users:read scope
        or Slack does not answer (not kept: asked again next time)."""
        if user not in self._users:
            try:
                info = await self.client.users_info(user=user)
            except Exception as exc:
                log.info("users.info for %s failed: %s", user, delivery_error(exc))
                return None
            if len(self._users) > 10_000:
                self._users.clear()
            self._users[user] = dict(info["user"])
        return self._users[user]

    async def _is_bot(self, user: str) -> bool:
        """``user`` is a bot or an app (users.info ``is_bot``; Slackbot too). Reaction events
        carry no ``bot_id`` as messages do. Without an answer the reaction is taken as a
        person's: feedback keeps working on apps without the users:read scope."""
        if user == "USLACKBOT":
            return True
        record = await self._user(user)
        return record is not None and bool(record.get("is_bot"))

    async def _author_name(self, user: str, fallback: str = "") -> str:
        """The user's display name for the prompt (users.info); ``fallback`` without an answer."""
        record = await self._user(user)
        if record is None:
            return fallback
        profile = record.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or record.get("name")
        return str(name or fallback)

    async def _submit(self, incoming: Incoming) -> EnqueueResult | None:
        assert self._intake is not None, "start() the adapter first"
        return await self._intake.submit(incoming)

    async def _quietly(self, request: Any, what: str) -> None:
        try:
            await request
        except Exception as exc:
            log.warning("Slack %s failed: %s", what, delivery_error(exc))

    # ------------------------------------------------------------------ egress

    async def open_reply(self, target: ReplyTarget) -> ReplyStream:
        target = await self._waiting_links.adopt(target)
        if target.reply_target.get("ephemeral") == "1":
            return SlackEphemeralReply(target, limit=self._limit)
        if self.options.streaming == "native" and native_surface(target.reply_target):
            return open_native_reply(
                self.client,
                target,
                limit=self._limit,
                error=delivery_error,
                min_interval=self._edit_interval,
                closing_blocks=self._closing,
            )
        return SlackReply(
            self.client,
            target,
            limit=self._limit,
            min_interval=self._edit_interval,
            closing_blocks=self._closing,
        )

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        where: Mapping[str, str] = target.reply_target
        if self.options.streaming == "native" and native_surface(where):
            # An apology after a streamed attempt: its stream ends before the notice follows.
            await stop_streams(self.client, where["channel"], target.existing_message_ids)
        if where.get(NOTICE_TO):
            await self._tell_privately(where, to_mrkdwn(text))
            return
        if where.get("ephemeral") == "1":
            await send_ephemeral(AsyncWebhookClient(where["response_url"]), to_mrkdwn(text))
            return
        await self._post_in_place(target, to_mrkdwn(text))

    async def post_handoff(self, target: ReplyTarget) -> None:
        """Someone asked for a human: say so where they asked (in the channel even for a
        ``--private`` question, so that a human sees it), pinging the support user group."""
        support = f"<!subteam^{self._support_group}> " if self._support_group else ""
        resume = texts.HANDOFF_RESUME_HINT.format(command=f"{self._command} resume")
        body = to_mrkdwn(texts.HANDOFF_NOTICE.format(support="", resume=resume))
        await self._post_in_place(target, support + body)

    async def ping_support(self, target: ReplyTarget, text: str) -> None:
        """A later word to the support user group in the handed-off conversation (its thread)."""
        support = f"<!subteam^{self._support_group}> " if self._support_group else ""
        where: Mapping[str, str] = target.reply_target
        try:
            await self.client.chat_postMessage(
                channel=where["channel"],
                thread_ts=where.get("thread_ts") or where.get("ts") or None,
                text=support + to_mrkdwn(text),
            )
        except Exception as exc:
            raise delivery_error(exc) from exc

    async def _tell_privately(self, where: Mapping[str, str], body: str) -> None:
        """A refusal, for its sender only: through the slash command's response_url, else
        ``chat.postEphemeral`` in the channel (and thread)."""
        try:
            if where.get("response_url"):
                await send_ephemeral(AsyncWebhookClient(where["response_url"]), body)
            else:
                await self.client.chat_postEphemeral(
                    channel=where["channel"],
                    user=where[NOTICE_TO],
                    thread_ts=where.get("thread_ts") or None,
                    text=body,
                )
        except Exception as exc:
            raise delivery_error(exc) from exc

    async def _post_in_place(self, target: ReplyTarget, body: str) -> None:
        """Post mrkdwn ``body`` as the reply to ``target`` (into its placeholder, if any)."""
        where: Mapping[str, str] = target.reply_target
        try:
            placeholder = where.get("ts", "")
            if placeholder and set(target.existing_message_ids) <= {placeholder}:
                # Nothing but the "thinking" placeholder was posted: it becomes the notice.
                header = where.get("header", "")
                await self.client.chat_update(
                    channel=where["channel"],
                    ts=placeholder,
                    text=f"{header}\n\n{body}" if header else body,
                )
                return
            await self.client.chat_postMessage(
                channel=where["channel"], thread_ts=where.get("thread_ts") or None, text=body
            )
        except Exception as exc:
            raise delivery_error(exc) from exc
