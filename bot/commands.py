"""Chat sub-commands, platform-neutral: ``help``, ``status``, ``forget``, ``prompt``, ``on``,
``off``, ``length`` and ``language``.

Adapters parse what the user typed after the bot's command (``/solar ...`` on Slack) with
``parse_command``; anything that is not a sub-command is a question (``ASK``) for the intake. Where
commands are marked by a prefix instead (``@solarbot !status`` on Discord), ``parse_prefixed`` reads
them. For a sub-command the adapter builds a ``CommandContext`` (it alone knows whether the user is
an admin on its platform) and posts the Markdown text ``Commands.run`` returns.

Rules: ``forget`` is open to everyone unless admins are configured, then admins only; changing a
setting (``prompt TEXT``/``prompt reset``, ``on``, ``off``, ``length N``/``length reset``,
``language X``/``language reset``, ``mode auto|mention``) is admins only; ``resume`` (the bot answers again where
someone asked for a human) is open to everyone (refused with a hint when no admins are
configured); ``prompt``, ``length``, ``language`` and ``mode`` alone show the setting. In a channel that is
switched off only an admin's ``on`` and ``status`` work (``switched_off_for``). Settings are per
channel: threads inherit them.
"""

from __future__ import annotations

import asyncio
import enum
import re
from dataclasses import dataclass
from typing import Any

from bot import texts
from bot.hygiene import clean_outgoing
from bot.prompt_room import PromptGauge, PromptRoom
from bot.records import AnswerMode, ChannelConfig, KnowledgeMode
from storage.repository import Repository

PRIVATE_FLAGS = ("--private", "-p")
RESET_WORDS = ("reset", "default", "clear")
LENGTH_RESET_WORDS = (*RESET_WORDS, "off", "none")
MAX_SYSTEM_PROMPT_CHARS = 4000
MIN_REPLY_CHARS = 20
MAX_REPLY_CHARS = 100_000
MAX_LANGUAGE_CHARS = 40
STATUS_PROMPT_EXCERPT = 80
# A language name: one or two words of letters (``German``, ``Brazilian Portuguese``, ``Nynorsk``).
_LANGUAGE = re.compile(r"[^\W\d_]+(?:[ -][^\W\d_]+)?")
_NUMBER = re.compile(r"\d[\d,_]*")
_ANSWER_MODES = frozenset(mode.value for mode in AnswerMode)
# What a channel that is switched off still takes, from an admin.
_WHEN_OFF = frozenset({"on", "status"})


class CommandName(enum.StrEnum):
    ASK = "ask"
    HELP = "help"
    STATUS = "status"
    FORGET = "forget"
    PROMPT = "prompt"
    ON = "on"
    OFF = "off"
    LENGTH = "length"
    LANGUAGE = "language"
    RESUME = "resume"
    KB = "kb"
    MODE = "mode"
    UNKNOWN = "unknown"  # a prefixed word that is no sub-command (``!foo``): the help is shown


_ALONE = (
    CommandName.HELP,
    CommandName.STATUS,
    CommandName.FORGET,
    CommandName.ON,
    CommandName.OFF,
    CommandName.RESUME,
)
_SETTINGS = (
    CommandName.PROMPT,
    CommandName.LENGTH,
    CommandName.LANGUAGE,
    CommandName.KB,
    CommandName.MODE,
)


@dataclass(frozen=True)
class ParsedCommand:
    name: CommandName
    argument: str = ""
    private: bool = False  # ASK only: answer so that only the asker sees it


def parse_command(text: str) -> ParsedCommand:
    """What follows the command: ``help``/``status``/``forget``/``on``/``off`` (alone),
    ``prompt [TEXT]``, ``length [N|reset]``, ``language [NAME|reset]`` (a name of one or two
    words), ``ask QUESTION`` (forces a question that starts with a sub-command word), an optional
    ``--private``/``-p`` flag before a question, or else the question itself. Empty = help."""
    stripped = text.strip()
    if not stripped:
        return ParsedCommand(CommandName.HELP)
    first, _, rest = stripped.partition(" ")
    word = first.lower()
    rest = rest.strip()
    if word in _ALONE and not rest:
        return ParsedCommand(CommandName(word))
    if word == CommandName.PROMPT:
        return ParsedCommand(CommandName.PROMPT, rest)
    if word == CommandName.LENGTH and (
        not rest or rest.lower() in LENGTH_RESET_WORDS or _NUMBER.fullmatch(rest)
    ):
        return ParsedCommand(CommandName.LENGTH, rest)
    if word == CommandName.LANGUAGE and (
        not rest or rest.lower() in RESET_WORDS or _LANGUAGE.fullmatch(rest)
    ):
        return ParsedCommand(CommandName.LANGUAGE, rest)
    if word == CommandName.KB and is_kb_argument(rest):
        return ParsedCommand(CommandName.KB, rest)
    if word == CommandName.MODE and (not rest or rest.lower() in _ANSWER_MODES):
        return ParsedCommand(CommandName.MODE, rest)
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


def parse_prefixed(text: str, *, prefix: str = "!") -> ParsedCommand | None:
    """A sub-command marked by ``prefix`` (``!status``, ``!length 500``, ``!prompt Be brief.``), or
    None when ``text`` does not start with it (a question). The prefix makes the intent explicit,
    so the word alone decides (an unknown word is ``UNKNOWN``, answered with the help)."""
    stripped = text.strip()
    if not stripped.startswith(prefix) or len(stripped) == len(prefix):
        return None
    first, _, rest = stripped[len(prefix) :].partition(" ")
    word = first.strip().lower()
    rest = rest.strip()
    if word in _ALONE:
        return ParsedCommand(CommandName(word))
    if word in _SETTINGS:
        return ParsedCommand(CommandName(word), rest)
    return ParsedCommand(CommandName.UNKNOWN, word)


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
        prefix: str = "",
        prompt_gauge: PromptGauge | None = None,
        auto_threads: bool = True,
    ) -> None:
        """``command`` is how users invoke the bot (``/solar``, ``@solarbot``); ``prefix`` marks a
        sub-command after it (``!`` on Discord: ``@solarbot !status``); ``prompt_gauge`` measures
        a new channel prompt in the model's tokens (``bot.prompt_room``); ``auto_threads``: the
        platform answers in threads of their own in ``mode auto`` channels (not the console)."""
        self._repository = repository
        self._command = command
        self._model_id = model_id
        self._default_prompt = default_system_prompt
        self._admin_setting = admin_setting
        self._private_answers = private_answers
        self._help_extra = help_extra
        self._prefix = prefix
        self._prompt_gauge = prompt_gauge
        self._auto_threads = auto_threads

    async def run(self, parsed: ParsedCommand, context: CommandContext) -> str:
        """Run a sub-command; returns the Markdown reply, cleaned like every other text the bot
        posts (``clean_outgoing``: a reply may echo what someone typed or an admin's prompt).
        ``ASK`` is not a sub-command."""
        return clean_outgoing(await self._answer(parsed, context))

    async def _answer(self, parsed: ParsedCommand, context: CommandContext) -> str:
        if parsed.name is CommandName.ASK:
            raise ValueError("a question is not a sub-command: submit it to the intake")
        if parsed.name is CommandName.HELP:
            return self.help(context)
        if parsed.name is CommandName.UNKNOWN:
            return texts.COMMAND_UNKNOWN.format(
                command=self._command,
                p=self._prefix,
                word=parsed.argument,
                help=self._help(context),
            )
        if await self.switched_off_for(parsed, context):
            return texts.CHANNEL_DISABLED
        if parsed.name is CommandName.STATUS:
            return await self._status(context)
        if parsed.name is CommandName.FORGET:
            return await self._forget(context)
        if parsed.name is CommandName.PROMPT:
            return await self._prompt(parsed.argument, context)
        if parsed.name in (CommandName.ON, CommandName.OFF):
            return await self._switch(parsed.name, context)
        if parsed.name is CommandName.LENGTH:
            return await self._length(parsed.argument, context)
        if parsed.name is CommandName.RESUME:
            return await self._resume(context)
        if parsed.name is CommandName.KB:
            return await self._kb(parsed.argument, context)
        if parsed.name is CommandName.MODE:
            return await self._mode(parsed.argument, context)
        return await self._language(parsed.argument, context)

    async def switched_off_for(self, parsed: ParsedCommand, context: CommandContext) -> bool:
        """True when the channel is switched off and this is not an admin's ``on`` or ``status``
        (what a switched-off channel still takes): the command is to be ignored."""
        if context.is_admin and parsed.name.value in _WHEN_OFF:
            return False
        return not (await self._config(context)).enabled

    def help(self, context: CommandContext) -> str:
        return clean_outgoing(self._help(context))

    def _help(self, context: CommandContext) -> str:
        return texts.COMMAND_HELP.format(
            command=self._command,
            p=self._prefix,
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
                command=self._command, p=self._prefix, name=name.value, setting=self._admin_setting
            )
        return texts.COMMAND_ADMINS_ONLY.format(
            command=self._command, p=self._prefix, name=name.value
        )

    async def _config(self, context: CommandContext) -> ChannelConfig:
        return await asyncio.to_thread(
            self._repository.channel_config,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
        )

    async def _update(self, context: CommandContext, **changes: Any) -> ChannelConfig:
        return await asyncio.to_thread(
            self._repository.update_channel_config,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
            changes=changes,
        )

    async def _status(self, context: CommandContext) -> str:
        config = await self._config(context)
        queued = await asyncio.to_thread(self._repository.count_jobs)
        handoffs = await asyncio.to_thread(
            self._repository.handoffs_in_channel,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
        )
        if config.system_prompt is None:
            prompt_state = texts.COMMAND_STATUS_PROMPT_DEFAULT
        else:
            excerpt = " ".join(config.system_prompt.split())
            if len(excerpt) > STATUS_PROMPT_EXCERPT:
                excerpt = excerpt[: STATUS_PROMPT_EXCERPT - 1] + "…"
            prompt_state = texts.COMMAND_STATUS_PROMPT_CUSTOM.format(
                length=len(config.system_prompt), excerpt=excerpt
            )
        return texts.COMMAND_STATUS.format(
            model=self._model_id,
            queued=queued,
            prompt_state=prompt_state,
            enabled=(
                texts.COMMAND_STATUS_ENABLED if config.enabled else texts.COMMAND_STATUS_DISABLED
            ),
            length_state=_length_state(config),
            language_state=_language_state(config),
            kb_state=kb_state(config),
            mode_state=texts.MODE_STATE[config.answer_mode.value],
            handoffs=handoffs,
            admins=(
                texts.COMMAND_STATUS_ADMINS
                if context.admins_configured
                else texts.COMMAND_STATUS_NO_ADMINS
            ),
        )

    def resume_command(self) -> str:
        """How users type ``resume`` here (for the handoff notice)."""
        return f"{self._command} {self._prefix}{CommandName.RESUME.value}"

    async def _resume(self, context: CommandContext) -> str:
        """Open to everyone: the person who asked for a human, or the human, brings the bot back."""
        count = await asyncio.to_thread(
            self._repository.resume_channel,
            platform=context.platform,
            workspace=context.workspace,
            channel=context.channel,
        )
        if count == 0:
            return texts.COMMAND_RESUME_NOTHING
        return texts.COMMAND_RESUMED.format(count=count)

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
        if not argument:
            config = await self._config(context)
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
        room: PromptRoom | None = None
        if new_prompt is not None and self._prompt_gauge is not None:
            room = await asyncio.to_thread(self._prompt_gauge.measure, new_prompt)
            if room is not None and not room.enough:
                return texts.COMMAND_PROMPT_NO_ROOM.format(
                    tokens=room.prompt_tokens, room=max(room.room, 0), minimum=room.minimum
                )
        await self._update(context, system_prompt=new_prompt)
        if new_prompt is None:
            return texts.COMMAND_PROMPT_RESET
        set_text = texts.COMMAND_PROMPT_SET.format(prompt=_quoted(new_prompt))
        if room is None:
            return f"{set_text}\n\n{texts.COMMAND_PROMPT_ROOM_UNKNOWN}"
        return f"{set_text}\n\n" + texts.COMMAND_PROMPT_ROOM.format(
            tokens=room.prompt_tokens, room=room.room
        )

    async def _switch(self, name: CommandName, context: CommandContext) -> str:
        refusal = self._refusal(name, context)
        if refusal is not None:
            return refusal
        enabled = name is CommandName.ON
        await self._update(context, enabled=enabled)
        if enabled:
            return texts.COMMAND_SWITCHED_ON
        return texts.COMMAND_SWITCHED_OFF.format(command=self._command, p=self._prefix)

    async def _length(self, argument: str, context: CommandContext) -> str:
        if not argument:
            config = await self._config(context)
            return texts.COMMAND_LENGTH_SHOW.format(state=_length_state(config))
        refusal = self._refusal(CommandName.LENGTH, context)
        if refusal is not None:
            return refusal
        if argument.lower() in LENGTH_RESET_WORDS:
            await self._update(context, max_reply_chars=None)
            return texts.COMMAND_LENGTH_RESET
        digits = argument.replace(",", "").replace("_", "")
        if not digits.isdecimal() or not MIN_REPLY_CHARS <= int(digits) <= MAX_REPLY_CHARS:
            return texts.COMMAND_LENGTH_INVALID.format(
                command=self._command,
                p=self._prefix,
                low=MIN_REPLY_CHARS,
                high=MAX_REPLY_CHARS,
                value=argument[:40],
            )
        limit = int(digits)
        await self._update(context, max_reply_chars=limit)
        return texts.COMMAND_LENGTH_SET.format(limit=limit)

    async def _language(self, argument: str, context: CommandContext) -> str:
        if not argument:
            config = await self._config(context)
            return texts.COMMAND_LANGUAGE_SHOW.format(state=_language_state(config))
        refusal = self._refusal(CommandName.LANGUAGE, context)
        if refusal is not None:
            return refusal
        if argument.lower() in RESET_WORDS:
            await self._update(context, language=None)
            return texts.COMMAND_LANGUAGE_RESET
        if len(argument) > MAX_LANGUAGE_CHARS or not _LANGUAGE.fullmatch(argument):
            return texts.COMMAND_LANGUAGE_INVALID.format(
                command=self._command, p=self._prefix, limit=MAX_LANGUAGE_CHARS, value=argument[:40]
            )
        await self._update(context, language=argument)
        return texts.COMMAND_LANGUAGE_SET.format(language=argument)

    async def _mode(self, argument: str, context: CommandContext) -> str:
        """``mode`` shows when the channel gets answers; ``mode auto|mention`` sets it (admins
        only; ``bot.auto_answer``). Where the platform has no threads to answer in (the console)
        it says so."""
        if not self._auto_threads:
            return texts.MODE_NOT_HERE
        if not argument:
            config = await self._config(context)
            return texts.MODE_SHOW.format(state=texts.MODE_STATE[config.answer_mode.value])
        refusal = self._refusal(CommandName.MODE, context)
        if refusal is not None:
            return refusal
        if argument.lower() not in _ANSWER_MODES:
            return texts.MODE_INVALID.format(
                command=self._command, p=self._prefix, value=argument[:40]
            )
        mode = AnswerMode(argument.lower())
        await self._update(context, answer_mode=mode)
        return texts.MODE_SET[mode.value].format(command=self._command, p=self._prefix)

    # ------------------------------------------------------------------ kb (issue 14)

    async def _kb(self, argument: str, context: CommandContext) -> str:
        """``kb`` / ``kb status`` show the channel's collections and mode; ``kb NAME[,NAME]``
        attaches collections, ``kb off`` detaches them, ``kb mode strict|assist`` sets the
        mode (changes: admins only). Only collections that exist can be attached."""
        words = argument.split()
        if not words or (len(words) == 1 and words[0].lower() == "status"):
            return texts.KB_SHOW.format(state=kb_state(await self._config(context)))
        refusal = self._refusal(CommandName.KB, context)
        if refusal is not None:
            return refusal
        if words[0].lower() == "mode":
            mode = words[1].lower() if len(words) == 2 else ""
            if mode not in {m.value for m in KnowledgeMode}:
                return texts.KB_INVALID.format(
                    command=self._command, p=self._prefix, value=argument[:60]
                )
            await self._update(context, kb_mode=KnowledgeMode(mode))
            return texts.KB_MODE_SET[mode]
        if len(words) == 1 and words[0].lower() in KB_OFF_WORDS:
            await self._update(context, kb_collections=())
            return texts.KB_DETACHED
        names = kb_names(argument)
        if names is None:
            return texts.KB_INVALID.format(
                command=self._command, p=self._prefix, value=argument[:60]
            )
        known = await self._known_collections()
        missing = [name for name in names if name not in known]
        if missing:
            return texts.KB_UNKNOWN.format(
                missing=", ".join(missing),
                known=", ".join(sorted(known)) or texts.KB_NONE_YET,
            )
        config = await self._update(context, kb_collections=names)
        return texts.KB_ATTACHED.format(state=kb_state(config))

    async def _known_collections(self) -> frozenset[str]:
        """The names of the collections that exist."""
        found = await asyncio.to_thread(self._repository.collections)
        return frozenset(info.name for info in found)


KB_OFF_WORDS = ("off", "none", "reset", "clear")
MAX_KB_COLLECTIONS = 8
# A collection name as ``solarbot kb add --collection NAME`` takes it.
KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def kb_names(argument: str) -> tuple[str, ...] | None:
    """``NAME[,NAME]`` (spaces allowed after a comma, not between names without one: ``kb how
    do I`` is a question) as distinct names in order, or None when it is not such a list or has
    more than ``MAX_KB_COLLECTIONS`` names."""
    parts = [part.strip() for part in argument.split(",")]
    if not all(KB_NAME.fullmatch(part) for part in parts):
        return None
    names = tuple(dict.fromkeys(parts))
    return names if len(names) <= MAX_KB_COLLECTIONS else None


def is_kb_argument(rest: str) -> bool:
    """What may follow ``kb`` for it to be the sub-command (else the text is a question)."""
    words = rest.split()
    if not words or (len(words) == 1 and words[0].lower() in ("status", *KB_OFF_WORDS)):
        return True
    if words[0].lower() == "mode":
        return len(words) <= 2
    return kb_names(rest) is not None


def kb_state(config: ChannelConfig) -> str:
    if not config.kb_collections:
        return texts.KB_STATE_NONE
    return texts.KB_STATE.format(
        collections=", ".join(f"`{name}`" for name in config.kb_collections),
        mode=config.kb_mode.value,
    )


def _length_state(config: ChannelConfig) -> str:
    if config.max_reply_chars is None:
        return texts.COMMAND_STATUS_NO_LENGTH
    return texts.COMMAND_STATUS_LENGTH.format(limit=config.max_reply_chars)


def _language_state(config: ChannelConfig) -> str:
    if config.language is None:
        return texts.COMMAND_STATUS_NO_LANGUAGE
    return texts.COMMAND_STATUS_LANGUAGE.format(language=config.language)


def _quoted(text: str) -> str:
    """Continue a ``> `` quote over every line of ``text``."""
    return text.replace("\n", "\n> ")
