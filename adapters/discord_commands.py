"""Discord application commands: ``/ask question:<text> [private:<bool>] [file:<attachment>]`` and
``/solar <sub-command>``.

- **Registration**: ``build_tree`` puts both on discord.py's ``app_commands.CommandTree`` and
  ``sync_commands`` registers them with Discord (``PUT /applications/{app}/commands``, or
  ``/applications/{app}/guilds/{guild}/commands`` when ``SOLARBOT_DISCORD_COMMAND_GUILD`` names a
  server: guild commands appear at once, global ones can take up to an hour). Only an ingress
  process registers.
- **Sub-commands** come from one table, ``SUBCOMMANDS``, that maps the core's ``!`` commands
  (``bot.commands.CommandName``) to typed options with descriptions; a row whose name the core does
  not know is not registered, so a new core command is one row here. The core runs them
  (``Commands.run``) with the adapter's admin decision, exactly as for ``@solarbot !status``.
- **Answering**: every interaction is deferred at once (Discord allows 3 seconds): ``/ask`` is
  then a question like a mention (intake -> queue -> worker), answered through the interaction's
  webhook by the same streamed reply (``adapters.discord_interaction_reply``), ephemeral with
  ``private:True``; ``/solar`` sub-commands are answered privately at once. The question's dedupe
  key is ``discord:interaction:<interaction id>``: a replayed interaction (the gateway, a restart,
  a second process) is one job and one answer.
- **A file with the question**: when attached files are read (``SOLARBOT_ATTACHMENT_*``), ``/ask``
  has an optional ``file`` option (type 11, ATTACHMENT). Discord uploads it and sends it in the
  interaction's ``data.resolved.attachments``; it is read like a message's files
  (``adapters.attachment_download``: size limit, budget, one polite line when it cannot be read)
  after the acknowledgement and before the question takes its turn, and stored with the turn.
- **Order**: handlers take a ticket in their channel's line (``adapters.conversation_order``,
  shared with the adapter's messages) before their first ``await``: questions and commands of one
  channel, thread or DM are stored in the order they arrived, whatever order their
  acknowledgements and downloads end in; other channels never wait for them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional

import discord
from discord import app_commands

from adapters.attachment_download import AttachmentReader, discord_file_refs
from adapters.conversation_order import ConversationOrder, Ticket
from adapters.discord_interaction_reply import InteractionAnswers, interaction_target
from adapters.discord_interactions import (
    InteractionPolicy,
    Place,
    SeenInteractions,
    already_acknowledged,
    is_admin,
    place_of,
)
from bot import texts
from bot.commands import (
    MAX_LANGUAGE_CHARS,
    MAX_REPLY_CHARS,
    MAX_SYSTEM_PROMPT_CHARS,
    MIN_REPLY_CHARS,
    CommandContext,
    CommandName,
    Commands,
    ParsedCommand,
)
from bot.dedupe import dedupe_key
from bot.delivery import IntakePort
from bot.errors import ConfigError, InvalidIncomingError
from bot.records import Attachment, Incoming

log = logging.getLogger(__name__)

PLATFORM = "discord"
QUESTION_CHARS = 6000  # Discord's longest string option
OptionKind = Literal["text", "integer", "flag", "choice", "file"]
Values = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class SlashOption:
    """One option of a command, as Discord shows it (name, type, description, limits)."""

    name: str
    description: str
    kind: OptionKind
    required: bool = False
    choices: tuple[str, ...] = ()
    low: int | None = None  # integers: the smallest value; text: the shortest
    high: int | None = None  # integers: the largest value; text: the longest

    def annotation(self) -> Any:
        """The annotation discord.py turns into this option's type, limits and choices."""
        base: Any
        if self.kind == "integer":
            base = app_commands.Range[int, self.low, self.high]
        elif self.kind == "flag":
            base = bool
        elif self.kind == "choice":
            base = Literal[self.choices]
        elif self.kind == "file":
            base = discord.Attachment  # option type 11, resolved by discord.py
        else:
            base = app_commands.Range[str, self.low or 1, self.high]
        return base if self.required else Optional[base]  # noqa: UP045 (evaluated at runtime)


def _first_value(values: Values) -> tuple[str, ...]:
    """The core's argument: the one option's text ("" when left out: show the setting)."""
    given = [str(value).strip() for value in values.values() if value is not None]
    return (given[0] if given else "",)


def _length_arguments(values: Values) -> tuple[str, ...]:
    if values.get("reset"):
        return ("reset",)
    characters = values.get("characters")
    return (str(characters) if characters is not None else "",)


def _kb_arguments(values: Values) -> tuple[str, ...]:
    """``collections`` and ``mode`` may come together: two changes, in that order."""
    arguments = []
    if values.get("collections"):
        arguments.append(str(values["collections"]).strip())
    if values.get("mode"):
        arguments.append(f"mode {values['mode']}")
    return tuple(arguments) or ("",)


@dataclass(frozen=True, kw_only=True)
class SlashSubcommand:
    """A ``/solar`` sub-command: a core command (``name``) with its options, and how the options
    given become the core's argument(s) (one run of the command per argument)."""

    name: str
    options: tuple[SlashOption, ...] = ()
    arguments: Callable[[Values], tuple[str, ...]] = _first_value

    @property
    def description(self) -> str:
        return texts.DISCORD_SLASH[self.name]


def _option(command: str, name: str, kind: OptionKind, **limits: Any) -> SlashOption:
    return SlashOption(
        name=name, description=texts.DISCORD_SLASH_OPTIONS[(command, name)], kind=kind, **limits
    )


SUBCOMMANDS: tuple[SlashSubcommand, ...] = (
    SlashSubcommand(name="help"),
    SlashSubcommand(name="status"),
    SlashSubcommand(
        name="prompt",
        options=(_option("prompt", "text", "text", high=MAX_SYSTEM_PROMPT_CHARS),),
    ),
    SlashSubcommand(name="on"),
    SlashSubcommand(name="off"),
    SlashSubcommand(
        name="length",
        options=(
            _option("length", "characters", "integer", low=MIN_REPLY_CHARS, high=MAX_REPLY_CHARS),
            _option("length", "reset", "flag"),
        ),
        arguments=_length_arguments,
    ),
    SlashSubcommand(
        name="language",
        options=(_option("language", "name", "text", high=MAX_LANGUAGE_CHARS),),
    ),
    SlashSubcommand(
        name="kb",
        options=(
            _option("kb", "collections", "text", high=600),
            _option("kb", "mode", "choice", choices=("strict", "assist")),
        ),
        arguments=_kb_arguments,
    ),
    SlashSubcommand(
        name="mode",
        options=(_option("mode", "mode", "choice", choices=("auto", "mention")),),
    ),
    SlashSubcommand(name="forget"),
    SlashSubcommand(name="resume"),
)

ASK_OPTIONS = (
    SlashOption(
        name="question",
        description=texts.DISCORD_ASK_QUESTION,
        kind="text",
        required=True,
        high=QUESTION_CHARS,
    ),
    SlashOption(name="private", description=texts.DISCORD_ASK_PRIVATE, kind="flag"),
)
# Offered when attached files are read (``SlashCommands(files=...)``).
ASK_FILE = SlashOption(name="file", description=texts.DISCORD_ASK_FILE, kind="file")


def available_subcommands() -> tuple[SlashSubcommand, ...]:
    """The rows of ``SUBCOMMANDS`` the core runs (a command it lacks is not offered)."""
    known = {name.value for name in CommandName}
    return tuple(spec for spec in SUBCOMMANDS if spec.name in known)


Run = Callable[[discord.Interaction[Any], Values], Awaitable[None]]


def _command(
    name: str,
    description: str,
    options: tuple[SlashOption, ...],
    run: Run,
    *,
    contexts: app_commands.AppCommandContext | None = None,
) -> app_commands.Command[Any, ..., None]:
    """A command whose options are ``options`` (discord.py reads them from the callback's
    signature: the signature is built from the table)."""

    async def callback(interaction: discord.Interaction[Any], **values: Any) -> None:
        await run(interaction, values)

    parameters = [
        inspect.Parameter(
            "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
        )
    ]
    parameters += [
        inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=option.annotation(),
            default=inspect.Parameter.empty if option.required else None,
        )
        for option in options
    ]
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    callback.__discord_app_commands_param_description__ = {  # type: ignore[attr-defined]
        option.name: option.description for option in options
    }
    return app_commands.Command(
        name=name, description=description, callback=callback, allowed_contexts=contexts
    )


class SlashCommands:
    """Handles ``/ask`` and ``/solar`` for the Discord adapter."""

    def __init__(
        self,
        *,
        intake: IntakePort,
        commands: Commands,
        policy: InteractionPolicy,
        answers: InteractionAnswers,
        on_enqueued: Callable[[int, Incoming], None] | None = None,
        order: ConversationOrder | None = None,
        files: AttachmentReader | None = None,
    ) -> None:
        self._intake = intake
        self._commands = commands
        self._policy = policy
        self._answers = answers
        self._seen = SeenInteractions()
        self._order = order if order is not None else ConversationOrder()
        self._on_enqueued = on_enqueued
        self._files = files

    # ------------------------------------------------------------------ registration

    def build_tree(self, client: discord.Client, *, guild: int | None) -> app_commands.CommandTree:
        """``/ask`` and ``/solar`` on a new command tree of ``client`` (for ``guild`` only, or
        global)."""
        tree: app_commands.CommandTree = app_commands.CommandTree(client)
        scope = discord.Object(id=guild) if guild is not None else None
        contexts = app_commands.AppCommandContext(
            guild=True, dm_channel=self._policy.dms, private_channel=False
        )
        ask_options = (*ASK_OPTIONS, ASK_FILE) if self._files is not None else ASK_OPTIONS
        tree.add_command(
            _command(
                "ask", texts.DISCORD_ASK_DESCRIPTION, ask_options, self.ask, contexts=contexts
            ),
            guild=scope,
        )
        solar = app_commands.Group(
            name="solar", description=texts.DISCORD_SOLAR_DESCRIPTION, allowed_contexts=contexts
        )
        for spec in available_subcommands():
            solar.add_command(
                _command(spec.name, spec.description, spec.options, self._runner(spec))
            )
        tree.add_command(solar, guild=scope)
        return tree

    def _runner(self, spec: SlashSubcommand) -> Run:
        async def run(interaction: discord.Interaction[Any], values: Values) -> None:
            await self.solar(interaction, spec, values)

        return run

    # ------------------------------------------------------------------ /ask

    async def ask(self, interaction: discord.Interaction[Any], values: Values) -> None:
        """A question: deferred at once, then stored and queued like a mention (in the order the
        questions arrived); the worker answers through the interaction's webhook."""
        if not self._seen.first_time(interaction.id):
            return
        with self._order.ticket(interaction.channel_id or 0) as ticket:
            await self._ask(interaction, values, ticket)

    async def _ask(
        self, interaction: discord.Interaction[Any], values: Values, ticket: Ticket
    ) -> None:
        private = bool(values.get("private"))
        acknowledged = await self._defer(interaction, private=private)  # before anything slow
        target = interaction_target(
            channel_id=interaction.channel_id or 0,
            application_id=interaction.application_id,
            token=interaction.token,
            private=private,
        )
        place = await place_of(interaction, self._policy)
        if place is None:
            if acknowledged:
                await self._answers.answer(target, texts.DISCORD_NOT_HERE, private_notice=True)
            return
        if not acknowledged:  # the intake's dedupe decides whether it is new
            log.info("discord: interaction %s was acknowledged elsewhere", interaction.id)
        user = interaction.user
        text = str(values.get("question") or "")
        files: tuple[Attachment, ...] = ()
        attached = values.get("file")
        if isinstance(attached, discord.Attachment) and self._files is not None:
            text = "\n".join(
                [
                    text,
                    texts.DISCORD_ATTACHMENT.format(
                        name=attached.filename, kind=attached.content_type or "unknown type"
                    ),
                ]
            )
            files = await self._files.read_all(discord_file_refs([attached]))  # before the turn
        try:
            incoming = Incoming(
                platform=PLATFORM,
                workspace=place.workspace,
                channel=place.channel,
                thread=place.thread,
                author_id=str(user.id),
                author_name=user.display_name,
                text=text,
                message_id=str(interaction.id),
                dedupe_key=dedupe_key(PLATFORM, "interaction", str(interaction.id)),
                reply_target=target,
                attachments=files,
            )
        except InvalidIncomingError as exc:
            log.info("discord: /ask refused: %s", exc)
            await self._answers.answer(target, texts.DISCORD_EMPTY_MENTION, private_notice=True)
            return
        await ticket.turn()
        try:
            result = await self._intake.submit(incoming)
        except Exception:  # the store failed: nothing was queued, and the asker is told
            log.exception("discord: /ask could not be stored")
            await self._answers.answer(target, texts.FAILED_REPLY, private_notice=True)
            return
        if result is None:  # the channel is switched off
            await self._answers.answer(target, texts.CHANNEL_DISABLED, private_notice=True)
        elif result.refused is not None:
            if not self._answers.was_answered(interaction.token):
                await self._answers.withdraw(target)  # told already within the window
        elif result.handoff and not result.created:
            resume = f"/solar {CommandName.RESUME.value}"
            notice = texts.HANDOFF_WAITING.format(command=resume)
            await self._answers.answer(target, notice, private_notice=True)
        elif result.created and not result.handoff and self._on_enqueued is not None:
            self._on_enqueued(result.job_id, incoming)

    # ------------------------------------------------------------------ /solar

    async def solar(
        self, interaction: discord.Interaction[Any], spec: SlashSubcommand, values: Values
    ) -> None:
        """A sub-command, run by the core (in the order the commands arrived); only the user who
        ran it sees the answer."""
        if not self._seen.first_time(interaction.id):
            return
        with self._order.ticket(interaction.channel_id or 0) as ticket:
            await self._sub_command(interaction, spec, values, ticket)

    async def _sub_command(
        self,
        interaction: discord.Interaction[Any],
        spec: SlashSubcommand,
        values: Values,
        ticket: Ticket,
    ) -> None:
        if not await self._defer(interaction, private=True):  # before anything slow
            return  # another delivery of it is being answered
        target = interaction_target(
            channel_id=interaction.channel_id or 0,
            application_id=interaction.application_id,
            token=interaction.token,
            private=True,
        )
        place = await place_of(interaction, self._policy)
        if place is None:
            await self._answers.answer(target, texts.DISCORD_NOT_HERE)
            return
        await ticket.turn()
        try:
            text = await self._run(interaction, place, spec, values)
        except Exception:
            log.exception("discord: /solar %s failed", spec.name)
            text = texts.FAILED_REPLY
        await self._answers.answer(target, text)

    async def _run(
        self,
        interaction: discord.Interaction[Any],
        place: Place,
        spec: SlashSubcommand,
        values: Values,
    ) -> str:
        context = CommandContext(
            platform=PLATFORM,
            workspace=place.workspace,
            channel=place.channel,
            user_id=str(interaction.user.id),
            is_admin=is_admin(interaction, self._policy),
            admins_configured=True,  # admin roles, or else the Manage Server permission
        )
        name = CommandName(spec.name)
        runs = [ParsedCommand(name, argument) for argument in spec.arguments(values)]
        if await self._commands.switched_off_for(runs[0], context):
            return texts.CHANNEL_DISABLED
        refusal = await self._intake.admit_command(
            platform=PLATFORM,
            workspace=context.workspace,
            channel=context.channel,
            author_id=context.user_id,
        )
        if refusal is not None:
            return refusal.notice  # private: telling it again disturbs nobody
        answers = [await self._commands.run(parsed, context) for parsed in runs]
        return "\n\n".join(answers)

    # ------------------------------------------------------------------ acknowledging

    async def _defer(self, interaction: discord.Interaction[Any], *, private: bool) -> bool:
        """Acknowledge at once ("thinking…"). False when Discord says it was acknowledged
        already (a replay another process or an earlier delivery took)."""
        try:
            await interaction.response.defer(ephemeral=private, thinking=True)
        except discord.HTTPException as exc:
            if already_acknowledged(exc):
                return False
            raise
        return True


async def sync_commands(tree: app_commands.CommandTree, *, guild: int | None) -> int:
    """Register the tree's commands with Discord; returns how many. A guild the bot cannot
    register commands in is a configuration error naming the setting."""
    try:
        synced = await tree.sync(guild=discord.Object(id=guild) if guild is not None else None)
    except discord.Forbidden as exc:
        if guild is None:
            raise
        raise ConfigError(texts.DISCORD_COMMAND_GUILD_FORBIDDEN.format(guild=guild)) from exc
    return len(synced)


__all__ = [
    "ASK_FILE",
    "ASK_OPTIONS",
    "SUBCOMMANDS",
    "SlashCommands",
    "SlashOption",
    "SlashSubcommand",
    "available_subcommands",
    "sync_commands",
]
