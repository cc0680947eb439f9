"""Chat sub-commands, platform-neutral: ``help``, ``status``, ``forget`` and ``prompt``.

Adapters parse what the user typed after the bot's command (``/solar ...`` on Slack) with
``parse_command``; anything that is not a sub-command is a question (``ASK``) for the intake. For a
sub-command the adapter builds a ``CommandContext`` (it alone knows whether the user is an admin on
its platform) and posts the Markdown text ``Commands.run`` returns.

Rules: ``forget`` is open to everyone unless admins are configured, then admins only; ``prompt TEXT``
and ``prompt reset`` are admins only (refused with a hint when no admins are configured);
``prompt`` alone shows the channel's prompt. Settings are per channel: threads inherit them.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from bot import texts
from bot.models import ChannelConfig
from storage.repository import Repository

PRIVATE_FLAGS = ("--private", "-p")
RESET_WORDS = ("reset", "default", "clear")
MAX_SYSTEM_PROMPT_CHARS = 4000


class CommandName(enum.StrEnum):
    ASK = "ask"
    HELP = "help"
    STATUS = "status"
    FORGET = "forget"
    PROMPT = "prompt"


@dataclass(frozen=True)
class ParsedCommand:
    name: CommandName
    argument: str = ""
    private: bool = False  # ASK only: answer so that only the asker sees it


def parse_command(text: str) -> ParsedCommand:
    """What follows the command: ``help``/``status``/``forget`` (alone), ``prompt [TEXT]``,
    ``ask QUESTION`` (forces a question that starts with a sub-command word), an optional
    ``--private``/``-p`` flag before a question, or else the question itself. Empty = help."""
    stripped = text.strip()
    if not stripped:
        return ParsedCommand(CommandName.HELP)
    first, _, rest = stripped.partition(" ")
    word = first.lower()
    rest = rest.strip()
    if word in (CommandName.HELP, CommandName.STATUS, CommandName.FORGET) and not rest:
        return ParsedCommand(CommandName(word))
    if word == CommandName.PROMPT:
        return ParsedCommand(CommandName.PROMPT, rest)
    private = False
    if word in PRIVATE_FLAGS:
        private = True
        stripped = rest
        first, _, rest = stripped.partition(" ")
        word = first.lower()
        rest = rest.strip()
    if word == CommandName.ASK and rest:
        stripped = rest
    if not stripped:
        return ParsedCommand(CommandName.HELP)
    return ParsedCommand(CommandName.ASK, stripped, private=private)


@dataclass(frozen=True, kw_only=True)
class CommandContext:
    platform: str
    workspace: str
    channel: str
    user_id: str
    is_admin: bool  # decided by the adapter (e.g. the user is in SOLARBOT_SLACK_ADMIN_USERS)
    admins_configured: bool


class Commands:
    def __init__(
        self,
        repository: Repository,
        *,
        command: str,
        model_id: str,
        default_system_prompt: str,
        admin_setting: str,
        private_answers: bool = True,
        help_extra: str = "",
    ) -> None:
        self._repository = repository
        self._command = command
        self._model_id = model_id
        self._default_prompt = default_system_prompt
        self._admin_setting = admin_setting
        self._private_answers = private_answers
        self._help_extra = help_extra

    async def run(self, parsed: ParsedCommand, context: CommandContext) -> str:
        """Run a sub-command; returns the Markdown reply. ``ASK`` is not a sub-command."""
        if parsed.name is CommandName.HELP:
            return self.help(context)
        if parsed.name is CommandName.STATUS:
            return await self._status(context)
        if parsed.name is CommandName.FORGET:
            return await self._forget(context)
        if parsed.name is CommandName.PROMPT:
            return await self._prompt(parsed.argument, context)
        raise ValueError("a question is not a sub-command: submit it to the intake")

    def help(self, context: CommandContext) -> str:
        return texts.COMMAND_HELP.format(
            command=self._command,
            private_line=(
                texts.COMMAND_HELP_PRIVATE_LINE.format(command=self._command)
                if self._private_answers
                else ""
            ),
            forget_note=texts.COMMAND_HELP_FORGET_ADMINS if context.admins_configured else "",
            extra=self._help_extra,
        ).rstrip("\n")

    def _refusal(self, name: CommandName, context: CommandContext) -> str | None:
        if context.is_admin:
            return None
        if name is CommandName.FORGET and not context.admins_configured:
            return None
        if not context.admins_configured:
            return texts.COMMAND_NO_ADMINS.format(
                command=self._command, name=name.value, setting=self._admin_setting
            )
        return texts.COMMAND_ADMINS_ONLY.format(command=self._command, name=name.value)

    async def _config(self, context: CommandContext) -> ChannelConfig:
        return await asyncio.to_thread(
            self._repository.channel_config,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
        )

    async def _status(self, context: CommandContext) -> str:
        config = await self._config(context)
        queued = await asyncio.to_thread(self._repository.count_jobs)
        prompt_state = (
            texts.COMMAND_STATUS_PROMPT_DEFAULT
            if config.system_prompt is None
            else texts.COMMAND_STATUS_PROMPT_CUSTOM.format(length=len(config.system_prompt))
        )
        return texts.COMMAND_STATUS.format(
            model=self._model_id,
            queued=queued,
            prompt_state=prompt_state,
            enabled=(
                texts.COMMAND_STATUS_ENABLED if config.enabled else texts.COMMAND_STATUS_DISABLED
            ),
            admins=(
                texts.COMMAND_STATUS_ADMINS
                if context.admins_configured
                else texts.COMMAND_STATUS_NO_ADMINS
            ),
        )

    async def _forget(self, context: CommandContext) -> str:
        refusal = self._refusal(CommandName.FORGET, context)
        if refusal is not None:
            return refusal
        count = await asyncio.to_thread(
            self._repository.forget_channel,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
        )
        return texts.COMMAND_FORGOT.format(count=count)

    async def _prompt(self, argument: str, context: CommandContext) -> str:
        config = await self._config(context)
        if not argument:
            if config.system_prompt is None:
                return texts.COMMAND_PROMPT_SHOW_DEFAULT.format(
                    prompt=_quoted(self._default_prompt)
                )
            return texts.COMMAND_PROMPT_SHOW_CUSTOM.format(prompt=_quoted(config.system_prompt))
        refusal = self._refusal(CommandName.PROMPT, context)
        if refusal is not None:
            return refusal
        if argument.lower() in RESET_WORDS:
            new_prompt: str | None = None
        else:
            if len(argument) > MAX_SYSTEM_PROMPT_CHARS:
                return texts.COMMAND_PROMPT_TOO_LONG.format(
                    length=len(argument), limit=MAX_SYSTEM_PROMPT_CHARS
                )
            new_prompt = argument
        await asyncio.to_thread(
            self._repository.set_channel_config,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
            config=ChannelConfig(system_prompt=new_prompt, enabled=config.enabled),
        )
        if new_prompt is None:
            return texts.COMMAND_PROMPT_RESET
        return texts.COMMAND_PROMPT_SET.format(prompt=_quoted(new_prompt))


def _quoted(text: str) -> str:
    """Continue a ``> `` quote over every line of ``text``."""
    return text.replace("\n", "\n> ")
