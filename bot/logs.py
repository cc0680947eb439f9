"""Logging: human-readable lines by default, one JSON object per line with SOLARBOT_LOG_FORMAT=json.

Every line logged while a job is being processed carries that job's id and conversation: the worker
calls ``bind(job_id=..., conversation=...)`` at the start of each job's task, and asyncio copies the
context into everything the task starts (``asyncio.to_thread`` included), so nothing has to pass
them along by hand.

Secret settings (tokens, signing secrets, the database password) are masked in every formatted line,
whatever logged them, as a last line of defence: nothing should log them in the first place.
Secrets that are no setting are masked by their shape (``mask_url_secrets``), in both formats, in
tracebacks and in every library's lines (discord.py and slack_sdk log request URLs and gateway
payloads at DEBUG):

- the token in a webhook or interaction URL: Discord's ``/webhooks/<id>/<token>`` (the interaction
  webhook answers of ``/ask`` go there) and ``/interactions/<id>/<token>/callback``; Slack's
  ``response_url`` and hook URLs (``hooks.slack.com/{commands,actions,services}/<team>/<id>/
  <secret>``), plain or URL-encoded (``%2F``), whatever the host (a local fake, a proxy);
- the value of a ``token`` or ``response_url`` field in a logged payload (JSON, a Python dict's
  repr, a form body): the interaction token of every INTERACTION_CREATE event, a slash command's
  ``response_url``.

What is kept (the host, the id, the route) is enough to tell which request a line is about.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from bot.records import ConversationKey

LogFormat = Literal["text", "json"]

MASK = "***"
# Fields a record carries when bound; the text format appends them, JSON has them as keys.
CONTEXT_FIELDS = ("job_id", "conversation")
# Libraries whose INFO lines drown ours.
NOISY_LOGGERS = ("httpx", "urllib3", "transformers", "accelerate", "alembic", "aiohttp.access")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "solarbot_log_context", default=None
)


def describe_conversation(key: ConversationKey) -> str:
    """``platform:workspace:channel:thread`` (empty parts stay empty), the ``conversation`` field."""
    return f"{key.platform}:{key.workspace}:{key.channel}:{key.thread}"


def bind(**fields: Any) -> None:
    """Attach ``fields`` to every line logged from now on in this task (and what it starts)."""
    current = dict(_context.get() or {})
    current.update(fields)
    _context.set(current)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """``bind`` for a block: the previous context is restored afterwards."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, Any]:
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (``record.job_id``, ``record.conversation``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name))
        return True


_SLASH = r"(?:/|%2[Ff])"  # a path separator, plain or URL-encoded
_URL_SECRETS = (
    # Discord: /webhooks/<id>/<token>, /interactions/<id>/<token>/callback
    re.compile(rf"({_SLASH}(?:webhooks|interactions){_SLASH}\d+{_SLASH})[A-Za-z0-9_.\-]+"),
    # Slack: response_url and hooks, /commands|actions|services/<team>/<id>/<secret>
    re.compile(
        rf"({_SLASH}(?:commands|actions|services|workflows|triggers){_SLASH}"
        rf"[A-Z0-9]+{_SLASH}[A-Za-z0-9]+{_SLASH})[A-Za-z0-9_\-]+"
    ),
)
_SECRET_FIELDS = r"(?:token|response_url)"
# "token": "v" / 'token': 'v' (also JSON-escaped quotes), and token=v in a form body.
_FIELD_SECRETS = (
    re.compile(rf"""(\\?["']{_SECRET_FIELDS}\\?["']\s*:\s*\\?["'])[^"'\\]+"""),
    re.compile(rf"""((?<![A-Za-z0-9_]){_SECRET_FIELDS}=)[^&\s'"]+"""),
)


def mask_url_secrets(text: str) -> str:
    """``text`` with webhook/interaction tokens and ``response_url`` secrets masked (see the
    module docstring); everything else as it was."""
    for pattern in (*_URL_SECRETS, *_FIELD_SECRETS):
        text = pattern.sub(rf"\g<1>{MASK}", text)
    return text


class _Masking:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole; very short values would
        # mask ordinary words and are not secrets worth the name.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        text = mask_url_secrets(text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [job=12 conversation=slack:T1:C1:]``"""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{'job' if name == 'job_id' else name}={value}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
        ]
        if extras:
            first, newline, rest = line.partition("\n")
            line = f"{first} [{' '.join(extras)}]{newline}{rest}"
        return self._masking.mask(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, conversation (+ exception)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._masking = _Masking(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._masking.mask(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self._masking.mask(self.formatException(record.exc_info))
        return self._masking.mask(json.dumps(entry, ensure_ascii=False, default=str))


def configure(
    *,
    level: str = "INFO",
    fmt: LogFormat = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one that writes ``fmt`` lines to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    secrets = list(secrets)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


_progress_bars: bool | None = None  # decided by configure_progress_bars


def configure_progress_bars(enabled: bool | None = None) -> bool:
    """Start-up progress bars on a terminal only: download and loading (huggingface_hub /
    transformers tqdm) and the engine's warm-up (``bot.generation.warmup``).

    ``enabled=None`` decides from whether stderr is a TTY: bars help a person watching a 21 GB
    download, and are noise in logs, pipes and tests. Returns the decision."""
    global _progress_bars
    if enabled is None:
        enabled = sys.stderr.isatty()
    _progress_bars = enabled
    from huggingface_hub.utils.tqdm import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if enabled else disable_progress_bars)()
    # transformers copies huggingface_hub's switch when it is imported: set it here only if it
    # already is (importing it takes a second, which a process without a model need not pay).
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        else:
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return enabled


def progress_bars_enabled() -> bool:
    """What ``configure_progress_bars`` decided; before it is called, whether stderr is a TTY."""
    return sys.stderr.isatty() if _progress_bars is None else _progress_bars
