"""The Discord adapter (discord.py 2.x): gateway ingress, REST egress.

Ingress (``start`` with ``ingress=True``): a gateway client hears every message it may see and hands
the ones addressed to the bot to the intake:

- an @mention of the bot (or of its managed role) or a reply to one of its messages in an allowed
  guild channel; every message in a thread the bot owns or that was started on one of its messages;
  every DM when DMs are switched on. Bots, webhooks, system messages and its own messages are ignored;
- the bot's mention is stripped, other mentions become readable names (``@Ana``, ``@Mods``,
  ``#general``), attachments are noted as ``[attachment: name (type)]`` and stickers as
  ``[sticker: name]``;
- conversation = the channel (threads: channel = parent, thread = the thread, so a thread has its
  own history but the channel's settings; DMs: the DM channel); dedupe key ``discord:<message id>``
  so a gateway replay or a restart never answers twice;
- messages are handled in gateway order per conversation (``adapters.conversation_order``: the
  channel, thread or DM they were written in; ``/ask`` and ``/solar`` share the line): a message
  whose files download slowly holds up the later messages of its own conversation, nothing else;
- a message that starts with ``!`` after the mention (``@solarbot !status``, ``!prompt TEXT``,
  ``!on``, ``!off``, ``!length N``, ``!language X``, ``!forget``, ``!help``) is a sub-command
  (``bot.commands``), answered at once; admins are members with one of ``admin_roles`` or, when
  none are configured, members with the Manage Server permission;
- a 👍 or 👎 reaction on a reply is stored as feedback on it (removing the reaction removes it):
  raw reaction events, which need neither the message nor the member in discord.py's cache; the
  allow-lists of messages apply (bots, guilds, channels, roles);
- sub-commands and empty-mention hints pass the intake's rate limits; a refusal is one reply per
  window (Discord has no private replies to plain messages) that never quotes the user;
- while the job waits, the channel shows "typing" (refreshed every 8 s, before Discord's ~10 s
  expiry) and, once it has waited ``queue_notice_after`` seconds behind other jobs, a placeholder
  reply with its queue position; the worker's reply continues that placeholder.

Interactions: ``/ask`` (with an optional file when attached files are read) and ``/solar``
(``adapters.discord_commands``, registered at start-up by an ingress process) and the buttons
under every answer (``adapters.discord_buttons``); an ``/ask`` answer is streamed through the
interaction's webhook (``adapters.discord_interaction_reply``).

Egress (``open_reply``/``post_notice``) needs only REST and the bot token, so a separate worker
process delivers replies without a gateway connection: a placeholder reply to the triggering message
(no ping), typing while generating, edits at most every ``edit_interval`` seconds, follow-up messages
past 2000 characters (``bot.splitting`` keeps code fences balanced). discord.py retries 429s and 5xx
itself; our edit throttle counts from the end of each request, so a slowed request delays the next
edit instead of queueing more. What still fails becomes ``DeliveryError`` for the worker's retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord.http import handle_message_parameters

from adapters.attachment_download import AttachmentOptions, AttachmentReader, discord_file_refs
from adapters.conversation_order import ConversationOrder
from adapters.discord_auto import DiscordAutoAnswer
from adapters.discord_buttons import PREFIX as BUTTON_PREFIX
from adapters.discord_buttons import ButtonClicks, answer_buttons
from adapters.discord_commands import SlashCommands, sync_commands
from adapters.discord_errors import delivery_error
from adapters.discord_format import content, is_my_role, render_text
from adapters.discord_interaction_reply import (
    InteractionAnswers,
    InteractionReply,
    InteractionWait,
    is_interaction,
    is_private,
    token_expired,
)
from adapters.discord_interactions import InteractionPolicy
from adapters.streaming import MessageGone, StreamedReply
from bot import texts
from bot.commands import CommandContext, Commands, ParsedCommand, parse_prefixed
from bot.dedupe import dedupe_key
from bot.delivery import IntakePort, ReplyTarget
from bot.errors import ConfigError, DeliveryError, InvalidIncomingError, SolarbotError
from bot.learning import ChatMessage, is_learning
from bot.records import Attachment, ConversationKey, Incoming, JobStatus
from bot.splitting import split_message

if TYPE_CHECKING:
    from discord.http import MultipartParameters
    from discord.types.message import MessageReference as MessageReferencePayload

log = logging.getLogger(__name__)

PLATFORM = "discord"
MESSAGE_LIMIT = 2000
COMMAND_PREFIX = "!"  # @solarbot !status
_NO_PINGS = discord.AllowedMentions.none()
_FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class DiscordOptions:
    """Everything the Discord adapter needs (``bot.service`` builds it from the settings): the bot
    token (never in a repr), who may talk to the bot, and the pacing of what it shows. Empty id
    sets = no restriction."""

    token: str = field(repr=False)
    allowed_guilds: frozenset[int] = frozenset()
    allowed_channels: frozenset[int] = frozenset()  # a thread is allowed when its parent is
    allowed_roles: frozenset[int] = frozenset()
    admin_roles: frozenset[int] = frozenset()  # always allowed where the bot is allowed
    dms: bool = False
    ingress: bool = True  # False: REST only (a worker process delivering replies)
    edit_interval: float = 1.0
    typing_interval: float = 8.0
    typing_idle: float = 120.0  # a reply stream with no new text for this long stops typing
    queue_notice_after: float = 1.0
    status_poll: float = 2.0
    ready_timeout: float = 60.0
    guild_ready_timeout: float = 2.0  # discord.py waits this long for GUILD_CREATEs after READY
    support_role: int | None = None  # pinged when someone asks for a human
    model_id: str = ""  # shown by ``!status``
    default_system_prompt: str = ""  # shown by ``!prompt`` in a channel without its own
    command_guild: int | None = None  # register the slash commands in this guild only
    # Files on questions are downloaded (attachment URLs) and read; None: not read.
    attachments: AttachmentOptions | None = None


def intents() -> discord.Intents:
    """Guild and DM messages with their content (the privileged Message Content intent), and
    reactions (👍/👎 feedback on replies)."""
    value = discord.Intents.none()
    value.guilds = True
    value.guild_messages = True
    value.dm_messages = True
    value.message_content = True
    value.guild_reactions = True
    value.dm_reactions = True
    return value


class _GatewayClient(discord.Client):
    def __init__(self, adapter: DiscordAdapter) -> None:
        super().__init__(
            intents=intents(),
            max_messages=None,
            chunk_guilds_at_startup=False,
            guild_ready_timeout=adapter.options.guild_ready_timeout,
        )
        self._adapter = adapter

    async def on_ready(self) -> None:
        self._adapter.ready.set()

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await self._adapter.handle_interaction(interaction)
        except Exception:
            log.exception("discord: handling interaction %s failed", interaction.id)

    async def on_message(self, message: discord.Message) -> None:
        try:
            await self._adapter.handle_message(message)
        except Exception:
            log.exception("discord: handling message %s failed", message.id)

    # Raw events: they come without the message or the member in discord.py's cache.
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, added=False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        try:
            await self._adapter.handle_reaction(payload, added=added)
        except Exception:
            log.exception("discord: handling a reaction on %s failed", payload.message_id)


@dataclass
class _Pending:
    """A job enqueued by this process that no reply stream has taken over yet."""

    channel_id: int
    reply_to: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    placeholder_id: str | None = None
    placeholder_text: str = ""
    adopted: bool = False
    question: Incoming | None = None
    # Links from the channel's knowledge base shown with the position (None: not looked up yet).
    waiting_help: str | None = None


class DiscordAdapter:
    def __init__(self, options: DiscordOptions) -> None:
        if not options.token.strip():
            raise ConfigError(texts.DISCORD_NO_TOKEN)
        self._token = options.token.strip()
        self.options = options
        self.client: discord.Client = _GatewayClient(self)
        self.ready = asyncio.Event()
        self._intake: IntakePort | None = None
        self._commands: Commands | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._pending: dict[int, _Pending] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread_parents: dict[int, int] = {}
        self._bot_threads: dict[int, bool] = {}
        self._closing = False
        self._arrivals = ConversationOrder()  # messages and commands, per conversation
        self._replies: dict[int, DiscordReply] = {}  # open streams, by job id
        # Slash commands and answers to interactions (adapters/discord_commands.py).
        self._answers = InteractionAnswers(self.client.http)
        self.slash: SlashCommands | None = None
        self.buttons: ButtonClicks | None = None
        self._waits: dict[int, InteractionWait] = {}  # /ask questions waiting, by job id
        self._files: AttachmentReader | None = None
        if options.attachments is not None and options.ingress:
            self._files = AttachmentReader(options=options.attachments)
        # Messages without a mention in auto-answer channels (``adapters.discord_auto``).
        self._auto = DiscordAutoAnswer(self.client.http, command_prefix=COMMAND_PREFIX)

    def __repr__(self) -> str:  # never show the token
        return f"DiscordAdapter(ingress={self.options.ingress})"

    @property
    def platform(self) -> str:
        return PLATFORM

    @property
    def connected(self) -> bool:
        """For /readyz: the gateway session is up (delivery only: the REST client is open)."""
        if self.client.is_closed():
            return False
        return self.client.is_ready() if self.options.ingress else self.client.user is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, intake: IntakePort) -> None:
        self._intake = intake
        try:
            await self.client.login(self._token)
        except discord.LoginFailure:
            await self.client.close()
            raise ConfigError(texts.DISCORD_LOGIN_FAILED) from None
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            await self.client.close()
            raise SolarbotError(f"could not reach Discord: {exc}") from None
        assert self.client.user is not None
        log.info("discord: logged in as %s (%s)", self.client.user, self.client.user.id)
        self._commands = Commands(
            intake.repository,
            command=f"@{self.client.user.name}",
            model_id=self.options.model_id,
            default_system_prompt=self.options.default_system_prompt,
            admin_setting="SOLARBOT_DISCORD_ADMIN_ROLES",
            private_answers=False,
            help_extra=texts.DISCORD_SLASH_HELP_EXTRA,
            prefix=COMMAND_PREFIX,
            prompt_gauge=intake.prompt_gauge,
        )
        if not self.options.ingress:
            return
        self.buttons = ButtonClicks(intake=intake, policy=self._policy(), answers=self._answers)
        self.client.add_dynamic_items(self.buttons.item_class())  # clicks on any answer, ever
        await self._register_commands(intake, self._commands)
        self._gateway = asyncio.create_task(self.client.connect(reconnect=True), name="discord")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait(
            [self._gateway, ready],
            timeout=self.options.ready_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        ready.cancel()
        if self._gateway.done():
            error = self._gateway.exception()
            await self.client.close()
            if isinstance(error, discord.PrivilegedIntentsRequired):
                raise ConfigError(texts.DISCORD_PRIVILEGED_INTENT) from None
            if isinstance(error, discord.LoginFailure):
                raise ConfigError(texts.DISCORD_LOGIN_FAILED) from None
            raise SolarbotError(f"the Discord gateway connection ended: {error!r}")
        if not self.ready.is_set():
            log.warning(
                "discord: gateway not ready after %.0fs; still trying", self.options.ready_timeout
            )
        self._gateway.add_done_callback(self._gateway_ended)

    async def _register_commands(self, intake: IntakePort, commands: Commands) -> None:
        """``/ask`` and ``/solar`` on the command tree, registered with Discord before the
        gateway connects (so no interaction arrives for a command the tree lacks)."""
        self.slash = SlashCommands(
            intake=intake,
            commands=commands,
            policy=self._policy(),
            answers=self._answers,
            on_enqueued=self._interaction_queued,
            order=self._arrivals,  # one line per channel for messages and commands
            files=self._files,
        )
        tree = self.slash.build_tree(self.client, guild=self.options.command_guild)
        try:
            count = await sync_commands(tree, guild=self.options.command_guild)
        except ConfigError:
            await self.client.close()
            raise
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            # The commands registered before stay; questions by mention work regardless.
            log.warning("discord: could not register the slash commands: %s", exc)
            return
        where = f"guild {self.options.command_guild}" if self.options.command_guild else "global"
        log.info("discord: %d application commands registered (%s)", count, where)

    def _interaction_queued(self, job_id: int, incoming: Incoming) -> None:
        """An ``/ask`` was queued: its response shows the queue position while it waits."""
        wait = InteractionWait(self.client.http, incoming)
        self._waits[job_id] = wait
        self._spawn(self._interaction_waits(job_id, wait), f"discord-ask-queued-{job_id}")

    async def _interaction_waits(self, job_id: int, wait: InteractionWait) -> None:
        assert self._intake is not None
        try:
            await wait.run(
                job_id,
                self._intake,
                notice_after=self.options.queue_notice_after,
                poll=self.options.status_poll,
                closing=lambda: self._closing,
            )
        finally:
            if self._waits.get(job_id) is wait:
                del self._waits[job_id]

    def _policy(self) -> InteractionPolicy:
        """The rules for messages, for the interaction handlers."""
        return InteractionPolicy(
            is_admin=lambda user, in_guild: self._is_admin(user, in_guild=in_guild),
            allowed=self._allowed,
            parent_of=self._parent_of,
            dms=self.options.dms,
        )

    async def handle_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """A click on a component that is none of ours (no ``solarbot:`` id: discord.py's
        dispatch ignores it) still gets an answer, privately, instead of "interaction failed"."""
        data: dict[str, Any] = dict(interaction.data or {})
        if interaction.type is not discord.InteractionType.component or self._closing:
            return
        if str(data.get("custom_id", "")).startswith(BUTTON_PREFIX):
            return
        try:
            await interaction.response.send_message(texts.DISCORD_BUTTON_UNKNOWN, ephemeral=True)
        except discord.HTTPException as exc:
            log.debug("discord: could not answer an unknown component: %s", exc)

    def _gateway_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._closing:
            error = task.exception()
            if isinstance(error, discord.PrivilegedIntentsRequired):
                reason = texts.DISCORD_PRIVILEGED_INTENT
            elif isinstance(error, discord.LoginFailure):
                reason = texts.DISCORD_LOGIN_FAILED
            else:
                reason = f"the gateway connection ended: {error!r}"
            if self._intake is not None:
                self._intake.ingress_failed(PLATFORM, reason)  # the service stops, exit code 2
            else:
                log.error("discord: %s", reason)

    async def stop(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()
        if self._files is not None:
            await self._files.close()
        if self._gateway is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._gateway

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ ingress

    async def handle_message(self, message: discord.Message) -> None:
        """Decide whether ``message`` is for the bot; if so, store and enqueue it.

        discord.py runs each event handler as its own task; the ticket, taken before the first
        ``await``, keeps the messages of one channel, thread or DM in gateway order (two quick
        questions there are queued in the order they were sent), while other conversations go
        on: a slow download of one message's files holds up only its own conversation
        (``adapters.conversation_order``, shared with ``/ask`` and ``/solar``).
        """
        with contextlib.ExitStack() as held:
            ticket = held.enter_context(self._arrivals.ticket(message.channel.id))
            await ticket.turn()
            await self._handle_message(message, held)

    async def _handle_message(self, message: discord.Message, held: contextlib.ExitStack) -> None:
        me = self.client.user
        intake = self._intake
        if me is None or intake is None or self._closing:
            return
        author = message.author
        if author.bot or author.id == me.id or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        guild = message.guild
        thread_id = 0
        channel_id = message.channel.id
        reply_channel, reply_to = message.channel.id, message.id
        if guild is None:
            if not self.options.dms:
                return
        else:
            addressed = self._addressed(message, me.id)
            parent_id, is_thread = await self._parent_of(message.channel)
            if is_thread:
                thread_id, channel_id = message.channel.id, parent_id
            if self._allowed(guild.id, channel_id, author):  # auto-answer channels first
                auto = await self._auto.consider(
                    message,
                    intake=intake,
                    my_id=me.id,
                    channel_id=channel_id,
                    thread_id=thread_id,
                    addressed=addressed,
                )
                if auto.handled:
                    return
                if auto.thread_id:  # answered in the thread started on the message
                    thread_id = reply_channel = auto.thread_id
                    # In the new thread's line (first, unless a replay): a follow-up written
                    # there while this question's files download is stored after it.
                    await held.enter_context(self._arrivals.ticket(thread_id)).turn()
                    reply_to = 0
                addressed = addressed or auto.answer or bool(auto.thread_id)
            if is_thread and not addressed:
                addressed = await self._is_bot_thread(message.channel, parent_id, me.id)
            if not addressed or not self._allowed(guild.id, channel_id, author):
                return
        text = render_text(message, me.id)
        parsed = parse_prefixed(text, prefix=COMMAND_PREFIX)
        if parsed is not None:
            await self._run_command(message, parsed, channel_id)
            return
        if not text:
            here = ConversationKey(
                platform=PLATFORM,
                workspace=str(guild.id) if guild is not None else "",
                channel=str(channel_id),
                thread=str(thread_id) if thread_id else "",
            )
            # Switched off or waiting for a human: not even the hint.
            if await asyncio.to_thread(intake.repository.stays_silent, here):
                return
            # A hint is a post too: it passes the rate limits like a command.
            refusal = await intake.admit_command(
                platform=PLATFORM,
                workspace=str(guild.id) if guild is not None else "",
                channel=str(channel_id),
                author_id=str(author.id),
            )
            if refusal is None:
                await self._send_plain(message.channel.id, message.id, texts.DISCORD_EMPTY_MENTION)
            elif not refusal.quiet:
                await self._send_plain(message.channel.id, message.id, refusal.notice)
            return
        files: tuple[Attachment, ...] = ()
        if self._files is not None and message.attachments:
            files = await self._files.read_all(discord_file_refs(message.attachments))
        try:
            incoming = Incoming(
                platform=PLATFORM,
                workspace=str(guild.id) if guild is not None else "",
                channel=str(channel_id),
                thread=str(thread_id) if thread_id else "",
                author_id=str(author.id),
                author_name=author.display_name,
                text=text,
                message_id=str(message.id),
                dedupe_key=dedupe_key(PLATFORM, str(message.id)),
                reply_target={"channel_id": str(reply_channel), "message_id": str(reply_to)},
                attachments=files,
            )
        except InvalidIncomingError:
            return
        result = await intake.submit(incoming)
        if result is not None and result.created and not result.handoff:
            pending = _Pending(channel_id=reply_channel, reply_to=reply_to, question=incoming)
            self._pending[result.job_id] = pending
            self._spawn(
                self._while_queued(result.job_id, pending), f"discord-queued-{result.job_id}"
            )

    async def _run_command(
        self, message: discord.Message, parsed: ParsedCommand, channel_id: int
    ) -> None:
        """``@bot !status`` and friends (``bot.commands``), answered with a reply to the command. In
        a switched-off channel everything but an admin's ``!on``/``!status`` is ignored."""
        assert self._commands is not None
        guild = message.guild
        context = CommandContext(
            platform=PLATFORM,
            workspace=str(guild.id) if guild is not None else "",
            channel=str(channel_id),
            user_id=str(message.author.id),
            is_admin=self._is_admin(message.author, in_guild=guild is not None),
            admins_configured=True,  # admin roles, or else the Manage Server permission
        )
        if await self._commands.switched_off_for(parsed, context):
            log.info("discord: ignored a command in switched-off channel %s", channel_id)
            return
        assert self._intake is not None
        refusal = await self._intake.admit_command(
            platform=PLATFORM,
            workspace=context.workspace,
            channel=context.channel,
            author_id=context.user_id,
        )
        if refusal is not None:
            # Discord has no private replies to plain messages: one notice per window, no quote.
            reply = "" if refusal.quiet else refusal.notice
        else:
            reply = await self._commands.run(parsed, context)
        if not reply:
            return
        try:
            for index, chunk in enumerate(split_message(reply, limit=MESSAGE_LIMIT)):
                await self._send_plain(
                    message.channel.id, message.id if index == 0 else None, chunk
                )
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.warning("discord: could not answer a command: %s", delivery_error(exc))

    def _is_admin(self, author: discord.abc.User, *, in_guild: bool) -> bool:
        """A member with one of the admin roles; with none configured, a member with the Manage
        Server permission (the server's owner and administrators have it). In a DM the person
        is the admin of their own conversation."""
        if not in_guild:
            return True
        if self.options.admin_roles:
            roles = {role.id for role in getattr(author, "roles", ())}
            return bool(roles & self.options.admin_roles)
        return isinstance(author, discord.Member) and author.guild_permissions.manage_guild

    async def handle_reaction(
        self, payload: discord.RawReactionActionEvent, *, added: bool
    ) -> None:
        """A 👍/👎 added to or removed from one of the bot's replies: feedback on that reply."""
        me = self.client.user
        intake = self._intake
        if me is None or intake is None or self._closing or payload.user_id == me.id:
            return
        if is_learning(payload.emoji.name or ""):
            await self._learn(payload, added=added)
            return
        if payload.message_author_id is not None and payload.message_author_id != me.id:
            return  # on someone else's message (Discord says whose, when it knows)
        guild_id = payload.guild_id
        if guild_id is None and not self.options.dms:
            return
        member = payload.member  # sent with guild reaction adds, never with removals
        if member is not None and member.bot:
            return  # other bots' votes are not feedback (their messages are ignored too)
        if guild_id is not None:
            # The allow-lists of messages: guild, channel (a thread's parent) and, where Discord
            # says who reacted (adds), their roles. A removal can only take back the remover's
            # own vote, which was stored only if it passed these lists when it was added.
            channel = self.client.get_channel(
                payload.channel_id
            ) or self.client.get_partial_messageable(payload.channel_id, guild_id=guild_id)
            channel_id, _ = await self._parent_of(channel)
            if member is not None:
                if not self._allowed(guild_id, channel_id, member):
                    return
            elif not self._allowed_place(guild_id, channel_id):
                return
        await intake.reaction(
            platform=PLATFORM,
            workspace=str(guild_id) if guild_id is not None else "",
            message_id=str(payload.message_id),
            user_id=str(payload.user_id),
            emoji=payload.emoji.name or "",
            added=added,
        )

    async def _learn(self, payload: discord.RawReactionActionEvent, *, added: bool) -> None:
        """An admin's 📚 on any message of an allowed guild channel: the message joins the
        channel's knowledge base (``bot.learning``), linked back to it; removing the 📚 takes
        it out. Discord sends no member with a removal: the remover is fetched to check."""
        guild_id = payload.guild_id
        assert self._intake is not None
        if guild_id is None:
            return
        member = payload.member
        if member is None:
            guild = self.client.get_guild(guild_id)
            if guild is None:
                return
            try:
                member = await guild.fetch_member(payload.user_id)
            except discord.HTTPException:
                return
        if member.bot or not self._is_admin(member, in_guild=True):
            return
        channel = self.client.get_channel(
            payload.channel_id
        ) or self.client.get_partial_messageable(payload.channel_id, guild_id=guild_id)
        channel_id, _ = await self._parent_of(channel)
        if not self._allowed_place(guild_id, channel_id):
            return
        text, author = "", ""
        if added:
            try:
                data = await self.client.http.get_message(payload.channel_id, payload.message_id)
            except discord.HTTPException as exc:
                log.warning("discord: could not read a message to learn: %s", exc)
                return
            text = str(data.get("content") or "")
            who = data.get("author") or {}
            author = str(who.get("global_name") or who.get("username") or "")
        await self._intake.learn(
            ChatMessage(
                platform=PLATFORM,
                workspace=str(guild_id),
                channel=str(channel_id),
                message_id=str(payload.message_id),
                text=text,
                author_name=author,
                link=(
                    f"https://discord.com/channels/{guild_id}/{payload.channel_id}/"
                    f"{payload.message_id}"
                ),
            ),
            added=added,
        )

    def _addressed(self, message: discord.Message, my_id: int) -> bool:
        if any(user.id == my_id for user in message.mentions):
            return True
        if any(is_my_role(role, my_id) for role in message.role_mentions):
            return True
        reference = message.reference
        resolved = reference.resolved if reference is not None else None
        return isinstance(resolved, discord.Message) and resolved.author.id == my_id

    def _allowed(self, guild_id: int, channel_id: int, author: discord.abc.User) -> bool:
        options = self.options
        if not self._allowed_place(guild_id, channel_id):
            return False
        if not options.allowed_roles:
            return True
        roles = {role.id for role in getattr(author, "roles", ())}
        return bool(roles & (options.allowed_roles | options.admin_roles))

    def _allowed_place(self, guild_id: int, channel_id: int) -> bool:
        """The guild and the channel (a thread's parent) are on the allow-lists."""
        options = self.options
        if options.allowed_guilds and guild_id not in options.allowed_guilds:
            return False
        return not options.allowed_channels or channel_id in options.allowed_channels

    async def _parent_of(self, channel: Any) -> tuple[int, bool]:
        """(parent channel id, is a thread) for a guild channel, fetching unknown channels once."""
        if isinstance(channel, discord.Thread):
            return channel.parent_id, True
        if not isinstance(channel, discord.PartialMessageable):
            return channel.id, False
        if channel.id not in self._thread_parents:
            try:
                fetched = await self.client.fetch_channel(channel.id)
            except discord.HTTPException:
                return channel.id, False
            parent = fetched.parent_id if isinstance(fetched, discord.Thread) else 0
            self._thread_parents[channel.id] = parent
        parent = self._thread_parents[channel.id]
        return (parent, True) if parent else (channel.id, False)

    async def _is_bot_thread(self, thread: Any, parent_id: int, my_id: int) -> bool:
        """The bot owns the thread, or it was started on one of the bot's messages."""
        if getattr(thread, "owner_id", None) == my_id:
            return True
        if thread.id not in self._bot_threads:
            try:
                starter = await self.client.http.get_message(parent_id, thread.id)
            except discord.HTTPException:
                starter = None
            owned = starter is not None and int(starter["author"]["id"]) == my_id
            if len(self._bot_threads) > 10_000:
                self._bot_threads.clear()
            self._bot_threads[thread.id] = owned
        return self._bot_threads[thread.id]

    async def _while_queued(self, job_id: int, pending: _Pending) -> None:
        """Typing (and, after a while behind others, a queue-position placeholder) until a reply
        stream takes over; a placeholder nobody took over is removed once the job is over."""
        assert self._intake is not None
        options = self.options
        started = time.monotonic()
        next_typing = 0.0
        try:
            while not self._closing:
                async with pending.lock:
                    if pending.adopted:
                        return
                    now = time.monotonic()
                    if now >= next_typing:
                        await self._typing(pending.channel_id)
                        next_typing = now + options.typing_interval
                    status = await self._intake.job_status(job_id)
                    if status is None or status in _FINISHED:
                        break
                    if status is JobStatus.QUEUED and now - started >= options.queue_notice_after:
                        position = await self._intake.queue_position(job_id)
                        if position > 0:
                            await self._show_position(pending, position)
                            if pending.placeholder_id is not None and next_typing > now:
                                await self._typing(pending.channel_id)  # a post ends typing
                await asyncio.sleep(options.status_poll)
            if pending.placeholder_id is not None and not pending.adopted:
                with contextlib.suppress(discord.HTTPException):  # another process answered
                    await self.client.http.delete_message(
                        pending.channel_id, int(pending.placeholder_id)
                    )
        except discord.HTTPException as exc:
            log.warning("discord: job %s: queue notice failed: %s", job_id, exc)
        finally:
            if self._pending.get(job_id) is pending:
                del self._pending[job_id]

    async def _show_position(self, pending: _Pending, position: int) -> None:
        text = texts.DISCORD_QUEUED.format(position=position)
        if pending.waiting_help is None:
            pending.waiting_help = ""
            if pending.question is not None and self._intake is not None:
                try:
                    pending.waiting_help = await self._intake.waiting_help(pending.question)
                except Exception as exc:  # the question waits all the same
                    log.warning("discord: no knowledge-base links for the placeholder: %s", exc)
        if pending.waiting_help and len(text) + len(pending.waiting_help) < MESSAGE_LIMIT:
            text = f"{text}\n{pending.waiting_help}"
        if pending.placeholder_id is None:
            data = await self.client.http.send_message(
                pending.channel_id,
                params=self._reply_params(text, pending.channel_id, pending.reply_to),
            )
            pending.placeholder_id = str(data["id"])
        elif text != pending.placeholder_text:
            await self.client.http.edit_message(
                pending.channel_id,
                int(pending.placeholder_id),
                params=handle_message_parameters(content=text, allowed_mentions=_NO_PINGS),
            )
        pending.placeholder_text = text

    # ------------------------------------------------------------------ egress

    def _reply_params(
        self,
        text: str,
        channel_id: int,
        reply_to: int | None,
        *,
        job: int = 0,
        nonce: str | None = None,
        allowed_mentions: discord.AllowedMentions = _NO_PINGS,
    ) -> MultipartParameters:
        reference: MessageReferencePayload | None = None
        if reply_to:
            reference = {
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                "fail_if_not_exists": False,  # the question was deleted: answer anyway
            }
        return handle_message_parameters(
            content=text,
            message_reference=reference if reference is not None else discord.utils.MISSING,
            allowed_mentions=allowed_mentions,
            # Discord drops a repeated nonce: discord.py's own retry of a POST after a 5xx that
            # did create the message does not post it twice. Reply parts pass a nonce of their
            # own that every attempt of the job repeats (see ``reply_nonce``).
            nonce=nonce or f"sb{job}-{secrets.token_hex(4)}",
        )

    async def _typing(self, channel_id: int) -> None:
        try:
            await self.client.http.send_typing(channel_id)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.debug("discord: typing in %s failed: %s", channel_id, exc)

    async def _send_plain(
        self,
        channel_id: int,
        reply_to: int | None,
        text: str,
        *,
        allowed_mentions: discord.AllowedMentions = _NO_PINGS,
    ) -> str:
        data = await self.client.http.send_message(
            channel_id,
            params=self._reply_params(
                text, channel_id, reply_to, allowed_mentions=allowed_mentions
            ),
        )
        return str(data["id"])

    async def open_reply(self, target: ReplyTarget) -> DiscordReply | InteractionReply:
        if is_interaction(target.reply_target):  # ``/ask``: through the interaction's webhook
            wait = self._waits.pop(target.job_id, None)
            if wait is not None:
                await wait.adopt()
            answer = InteractionReply(
                self.client.http,
                target,
                edit_interval=self.options.edit_interval,
                buttons=answer_buttons(target.job_id),
            )
            await answer.start(texts.DISCORD_THINKING)
            return answer
        pending = self._pending.get(target.job_id)
        shown: tuple[str, ...] = ()
        if pending is not None:
            async with pending.lock:
                pending.adopted = True
                if not target.existing_message_ids and pending.placeholder_id is not None:
                    target = replace(target, existing_message_ids=(pending.placeholder_id,))
                    shown = (pending.placeholder_text,)
        stream = DiscordReply(self, target, shown=shown)
        earlier = self._replies.pop(target.job_id, None)
        if earlier is not None:
            earlier.stop_typing()  # an abandoned attempt of the same job
        self._replies[target.job_id] = stream
        await stream.start(texts.DISCORD_THINKING)
        await stream.show_status(texts.DISCORD_THINKING)
        stream.start_typing()
        return stream

    def reply_done(self, stream: DiscordReply) -> None:
        if self._replies.get(stream.target.job_id) is stream:
            del self._replies[stream.target.job_id]

    async def post_handoff(self, target: ReplyTarget) -> None:
        """Someone asked for a human: a reply to them that pings the support role (that role
        only: every other message of the bot pings nobody)."""
        role = self.options.support_role
        command = self._commands.resume_command() if self._commands is not None else "!resume"
        resume = texts.HANDOFF_RESUME_HINT.format(command=command)
        text = texts.HANDOFF_NOTICE.format(support=f"<@&{role}> " if role else "", resume=resume)
        pings = (
            discord.AllowedMentions(
                everyone=False, users=False, roles=[discord.Object(id=role)], replied_user=False
            )
            if role
            else _NO_PINGS
        )
        channel_id = int(target.reply_target["channel_id"])
        reply_to = int(target.reply_target.get("message_id") or 0) or None
        try:
            if is_interaction(target.reply_target):
                # ``/ask``: the answer to the interaction; a private one pings nobody, so the
                # support role is pinged in the channel too.
                if is_private(target.reply_target):
                    await self._send_plain(channel_id, reply_to, text, allowed_mentions=pings)
                await self._answers.answer(target.reply_target, text, allowed_mentions=pings)
                return
            await self.client.http.send_message(
                channel_id,
                params=self._reply_params(text, channel_id, reply_to, allowed_mentions=pings),
            )
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise delivery_error(exc) from exc

    async def ping_support(self, target: ReplyTarget, text: str) -> None:
        """A later word to the support role in the handed-off conversation, as a reply to the
        message that asked for a human (that role is the only mention it may ping)."""
        role = self.options.support_role
        pings = (
            discord.AllowedMentions(
                everyone=False, users=False, roles=[discord.Object(id=role)], replied_user=False
            )
            if role
            else _NO_PINGS
        )
        channel_id = int(target.reply_target["channel_id"])
        reply_to = int(target.reply_target.get("message_id") or 0) or None
        body = (f"<@&{role}> " if role else "") + text
        try:
            await self.client.http.send_message(
                channel_id,
                params=self._reply_params(body, channel_id, reply_to, allowed_mentions=pings),
            )
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise delivery_error(exc) from exc

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        stream = self._replies.pop(target.job_id, None)
        if stream is not None:
            stream.stop_typing()
        if is_interaction(target.reply_target):
            try:
                await self._answers.answer(
                    target.reply_target, text, answered=bool(target.existing_message_ids)
                )
                return
            except discord.HTTPException as exc:
                if not token_expired(exc) or is_private(target.reply_target):
                    raise delivery_error(exc) from exc
                # The token expired (15 minutes): a public notice goes to the channel.
            except (aiohttp.ClientError, OSError) as exc:
                raise delivery_error(exc) from exc
        channel_id = int(target.reply_target["channel_id"])
        reply_to = int(target.reply_target.get("message_id") or 0) or None
        try:
            for index, chunk in enumerate(split_message(text, limit=MESSAGE_LIMIT)):
                await self._send_plain(channel_id, reply_to if index == 0 else None, chunk)
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            raise delivery_error(exc) from exc


class DiscordReply(StreamedReply):
    """One reply: the first message answers the user's message; follow-ups continue it."""

    def __init__(
        self, adapter: DiscordAdapter, target: ReplyTarget, *, shown: Sequence[str] = ()
    ) -> None:
        super().__init__(
            target, limit=MESSAGE_LIMIT, min_interval=adapter.options.edit_interval, shown=shown
        )
        self._adapter = adapter
        self._http = adapter.client.http
        self._channel_id = int(target.reply_target["channel_id"])
        self._reply_to = int(target.reply_target.get("message_id") or 0) or None
        self._typing: asyncio.Task[None] | None = None
        self._last_activity = time.monotonic()
        self._replacing = False

    def start_typing(self) -> None:
        """Typing until the reply is finished (or has failed), refreshed before it expires. A
        stream the worker abandoned (a generation error) stops by itself once it has been idle
        for ``typing_idle`` seconds."""
        self._last_activity = time.monotonic()
        self._typing = self._adapter._spawn(
            self._keep_typing(), f"discord-typing-{self.target.job_id}"
        )

    def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None

    async def _keep_typing(self) -> None:
        options = self._adapter.options
        while time.monotonic() - self._last_activity < options.typing_idle:
            await self._adapter._typing(self._channel_id)
            await asyncio.sleep(options.typing_interval)

    async def update(self, text: str) -> None:
        self._last_activity = time.monotonic()
        await super().update(text)

    async def finish(self, text: str) -> Sequence[str]:
        try:
            ids = await super().finish(text)
            if ids:  # the buttons go under the last part, once the answer is complete
                await self._call(self._add_buttons(ids[-1]))
            return ids
        finally:
            self.stop_typing()
            self._adapter.reply_done(self)

    async def post(self, text: str) -> str:
        first = not self.message_ids
        nonce = None if self._replacing else reply_nonce(self.target, len(self.message_ids))
        self._replacing = False
        data = await self._http.send_message(
            self._channel_id,
            params=self._adapter._reply_params(
                content(text),
                self._channel_id,
                self._reply_to if first else None,
                job=self.target.job_id,
                nonce=nonce,
            ),
        )
        if data.get("content") not in (None, content(text)):
            # The nonce matched a message an earlier attempt posted: bring it up to date.
            await self.edit(str(data["id"]), text)
        if self._typing is not None:
            await self._adapter._typing(self._channel_id)  # posting a message ends typing
        return str(data["id"])

    async def _add_buttons(self, message_id: str) -> None:
        params = handle_message_parameters(view=answer_buttons(self.target.job_id))
        with contextlib.suppress(discord.NotFound):  # deleted meanwhile: no buttons
            await self._http.edit_message(self._channel_id, int(message_id), params=params)

    async def edit(self, message_id: str, text: str) -> None:
        try:
            await self._http.edit_message(
                self._channel_id,
                int(message_id),
                params=handle_message_parameters(content=content(text), allowed_mentions=_NO_PINGS),
            )
        except discord.NotFound as exc:
            self._replacing = True  # its replacement must not reuse the deleted one's nonce
            raise MessageGone(message_id) from exc

    async def discard(self, message_id: str) -> None:
        with contextlib.suppress(discord.NotFound):
            await self._http.delete_message(self._channel_id, int(message_id))

    def delivery_error(self, exc: Exception) -> DeliveryError:
        self.stop_typing()  # the worker abandons this stream and retries later
        return delivery_error(exc)


def reply_nonce(target: ReplyTarget, part: int) -> str | None:
    """The nonce of part ``part`` of a job's reply: the same in every attempt, so a POST whose
    answer was lost (the worker died, the connection broke) and is sent again by a later attempt
    returns the message Discord already created instead of posting a second one (Discord enforces
    nonces for a few minutes), and never the same for two jobs (the job key is unique forever).
    At most 25 characters, as Discord requires (16 + 1 + the part number). None (a one-off random
    nonce) for a target outside any job."""
    if not target.job_key:
        return None
    return f"{target.job_key}p{part}"
