"""The console adapter: a terminal chat that goes through the same intake -> queue -> worker path.

Lines typed on stdin become ``Incoming`` messages in the current conversation (``#general`` until
``/channel NAME`` switches); replies stream to stdout as they are generated. End of input (Ctrl-D or
a closed pipe) or ``/quit`` sets ``input_closed``; the service then finishes pending replies and exits.

Every other slash word is a chat sub-command of ``bot.commands`` (``/status``, ``/prompt TEXT``,
``/forget``, ``/help``, ...), the same ones Slack's ``/solar`` and Discord's ``@solarbot !`` take:
the console routes them all to ``Commands`` (a sub-command added there works here at once) and the
person at the terminal is the admin of their own terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import re
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from bot import texts
from bot.commands import CommandContext, Commands, parse_prefixed
from bot.delivery import IntakePort, ReplyTarget
from bot.errors import InvalidIncomingError
from bot.records import Incoming

PLATFORM = "console"
COMMAND_PREFIX = "/"
# The console's own commands; every other slash word goes to ``bot.commands``.
_QUIT = frozenset({"/quit", "/exit"})
_CHANNEL = "/channel"
# ``bot.commands`` texts name a sub-command as "{command} {p}name"; the console has no command word
# before the prefix, which leaves a space after an opening ``**`` or backtick ("** /status**").
_EMPTY_INVOCATION = re.compile(r"(?<![^\s(])(\*\*|`) (?=[/A-Z])")


class ConsoleReplyStream:
    def __init__(self, adapter: ConsoleAdapter, target: ReplyTarget, *, live: bool) -> None:
        self._adapter = adapter
        self._target = target
        self._live = live
        self._shown = ""
        self._started = False
        self._id = f"console-{target.job_id}"

    @property
    def message_ids(self) -> Sequence[str]:
        return (self._id,) if self._started else ()

    def _header(self) -> str:
        return f"{texts.CONSOLE_BOT_NAME} [#{self._target.conversation.channel}]: "

    async def update(self, text: str) -> None:
        if not self._live:
            return
        if not self._started:
            self._adapter.write(self._header())
            self._started = True
        if text.startswith(self._shown):
            self._adapter.write(text[len(self._shown) :])
        else:  # an earlier attempt showed something else: start the reply over on a new line
            self._adapter.write("\n" + self._header() + text)
        self._shown = text

    async def finish(self, text: str) -> Sequence[str]:
        if self._live:
            await self.update(text)
            self._adapter.write("\n")
            self._adapter.release_live(self)
        else:
            self._started = True
            self._adapter.write_block(self._header() + text + "\n")
        self._adapter.prompt()
        return (self._id,)


@dataclass(frozen=True, kw_only=True)
class ConsoleOptions:
    """The terminal chat's streams and identity. ``wait_for_model``: say that the model is loading,
    and show the prompt only when ``model_ready`` is called (the service does that once the worker
    runs). ``interactive``: None = whether the input is a terminal."""

    input_stream: TextIO | None = None  # default: stdin
    output_stream: TextIO | None = None  # default: stdout
    channel: str = "general"
    author: str | None = None  # default: the login name
    interactive: bool | None = None
    wait_for_model: bool = False
    model_id: str = ""  # shown by ``/status``
    default_system_prompt: str = ""  # shown by ``/prompt`` in a channel without its own


class ConsoleAdapter:
    def __init__(self, options: ConsoleOptions | None = None) -> None:
        self.options = options = options or ConsoleOptions()
        self._input = options.input_stream if options.input_stream is not None else sys.stdin
        self._waiting_for_model = options.wait_for_model
        self._output = options.output_stream if options.output_stream is not None else sys.stdout
        self._interactive = (
            self._input.isatty() if options.interactive is None else options.interactive
        )
        self.channel = options.channel
        self._author = options.author or _login_name()
        self._session = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._live: ConsoleReplyStream | None = None
        self._deferred: list[str] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._commands: Commands | None = None
        self.input_closed = asyncio.Event()

    @property
    def platform(self) -> str:
        return PLATFORM

    def write(self, text: str) -> None:
        self._output.write(text)
        self._output.flush()

    def write_block(self, text: str) -> None:
        """A whole message: printed now, or after the reply streaming on screen has finished."""
        if self._live is not None and self._live.message_ids:
            self._deferred.append(text)
        else:
            self.write(text)

    def prompt(self) -> None:
        if (
            self._interactive
            and not self._waiting_for_model
            and not self.input_closed.is_set()
            and self._live is None
        ):
            self.write(f"you [#{self.channel}]> ")

    def model_ready(self, model_id: str, seconds: float, *, prompt: bool = True) -> None:
        """The model is loaded and replies can start: say so, then show the prompt (unless
        ``prompt`` is false: replies are on their way, and each ends with the prompt)."""
        if not self._waiting_for_model:
            return
        self._waiting_for_model = False
        if self._interactive:
            self.write(texts.CONSOLE_READY.format(model=model_id, seconds=seconds) + "\n")
            if prompt:
                self.prompt()

    def release_live(self, stream: ConsoleReplyStream) -> None:
        if self._live is stream:
            self._live = None
            for block in self._deferred:
                self.write(block)
            self._deferred.clear()

    async def start(self, intake: IntakePort) -> None:
        loop = asyncio.get_running_loop()
        self._commands = Commands(
            intake.repository,
            command="",
            model_id=self.options.model_id,
            default_system_prompt=self.options.default_system_prompt,
            admin_setting="",  # the person at the terminal is its admin
            private_answers=False,
            help_extra=texts.CONSOLE_HELP,
            prefix=COMMAND_PREFIX,
            prompt_gauge=intake.prompt_gauge,
            auto_threads=False,  # every line is answered already: /mode says so
        )

        def read_lines() -> None:  # a daemon thread: a blocked read never holds up the exit
            for line in self._input:
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
            loop.call_soon_threadsafe(self._lines.put_nowait, None)

        threading.Thread(target=read_lines, name="console-input", daemon=True).start()
        if self._interactive:
            self.write(texts.CONSOLE_BANNER + "\n")
            if self._waiting_for_model:
                self.write(texts.CONSOLE_LOADING + "\n")
            self.prompt()
        self._reader = asyncio.create_task(self._consume(intake), name="console-ingress")

    async def _consume(self, intake: IntakePort) -> None:
        while True:
            line = await self._lines.get()
            if line is None:
                break
            text = line.rstrip("\r\n")
            if not text.strip():
                self.prompt()
                continue
            if text.startswith(COMMAND_PREFIX):
                if not await self._command(text.strip()):
                    break
                continue
            try:
                result = await intake.submit(
                    Incoming(
                        platform=PLATFORM,
                        channel=self.channel,
                        author_id=self._author,  # one person at a terminal: no name in the prompt
                        text=text,
                        message_id=f"{self._session}-{next(self._counter)}",
                    )
                )
            except InvalidIncomingError as exc:
                self.write(f"{exc}\n")
                self.prompt()
                continue
            if result is None:  # switched off here (``/off``): say so instead of staying silent
                self.write_block(texts.CHANNEL_DISABLED + "\n")
                self.prompt()
        self.input_closed.set()

    async def _command(self, line: str) -> bool:
        """Run a console command or a chat sub-command; False means leave."""
        command, _, argument = line.partition(" ")
        if command.lower() in _QUIT:
            return False
        if command.lower() == _CHANNEL and argument.strip():
            self.channel = argument.strip().lstrip("#")
            self.write(texts.CONSOLE_SWITCHED.format(channel=self.channel) + "\n")
        elif command.lower() == _CHANNEL:
            self.write(texts.CONSOLE_CHANNEL.format(channel=self.channel) + "\n")
        else:
            reply = await self._sub_command(line)
            if reply:
                self.write_block(reply + "\n")
        self.prompt()
        return True

    async def _sub_command(self, line: str) -> str:
        """``/status``, ``/prompt TEXT``, ... through ``bot.commands`` (an unknown word gets the
        help). Unlike on the chat platforms they take no rate-limit tokens: the person at the
        terminal runs this process, and a sub-command never reaches the model."""
        parsed = parse_prefixed(line, prefix=COMMAND_PREFIX)
        assert parsed is not None and self._commands is not None  # the line starts with "/"
        context = CommandContext(
            platform=PLATFORM,
            workspace="",
            channel=self.channel,
            user_id=self._author,
            is_admin=True,  # one person at their own terminal
            admins_configured=True,
        )
        return for_terminal(await self._commands.run(parsed, context))

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def open_reply(self, target: ReplyTarget) -> ConsoleReplyStream:
        live = self._live is None and target.conversation.channel == self.channel
        stream = ConsoleReplyStream(self, target, live=live)
        if live:
            self._live = stream
        return stream

    async def post_notice(self, target: ReplyTarget, text: str) -> None:
        self.write_block(f"{texts.CONSOLE_BOT_NAME} [#{target.conversation.channel}]: {text}\n")
        self.prompt()


def for_terminal(markdown: str) -> str:
    """A sub-command's Markdown answer as terminal text: bold marks dropped, and sub-commands
    named as typed here (``/status``, not `` /status``)."""
    return _EMPTY_INVOCATION.sub(r"\1", markdown).replace("**", "")


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "you"
