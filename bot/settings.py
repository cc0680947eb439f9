"""Configuration, read once at start-up from the environment (and ``.env``) with a SOLARBOT_ prefix.

``load_settings()`` is the only entry point: it returns a frozen, typed ``Settings`` or raises
``ConfigError`` with one line naming the bad key, e.g. ``SOLARBOT_MAX_NEW_TOKENS: must be > 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot import texts
from bot.errors import ConfigError, ContextWindowError
from bot.generation.solar import DEFAULT_MODEL_ID
from bot.quota import usage_zone
from bot.support_hours import parse_support_hours

# Slack's suggested prompts (SOLARBOT_SLACK_SUGGESTED_PROMPTS).
SUGGESTED_PROMPTS_MAX = 4
SUGGESTED_PROMPT_TITLE_CHARS = 75
SUGGESTED_PROMPT_MESSAGE_CHARS = 2000

ENV_PREFIX = "SOLARBOT_"
# Variables under these prefixes belong to the test suite, not to the service.
IGNORED_PREFIXES = ("SOLARBOT_TEST_",)

# Slack ids: workspaces T..., enterprise E..., channels C/G/D..., users U/W...
_SLACK_ID = re.compile(r"[TECGDUWB][A-Z0-9]{2,}")

# SOLARBOT_ENGINE and `solarbot --engine` (bot/service.py builds each): the names and what they
# are, for the settings and for `solarbot --help`.
EngineName = Literal["local", "static", "openai", "fake"]
ENGINE_NAMES: tuple[EngineName, ...] = get_args(EngineName)
ENGINE_DESCRIPTIONS: dict[EngineName, str] = {
    "local": "the model here with transformers' continuous batching, default",
    "static": "the model here with solarbot's own batched decode loop and CUDA graphs",
    "openai": "an OpenAI-compatible server at SOLARBOT_OPENAI_BASE_URL",
    "fake": "scripted demo",
}

DEFAULT_SYSTEM_PROMPT = (
    "You are solarbot, a helpful assistant in a team chat. Answer clearly and concisely; "
    "use Markdown code blocks for code."
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # The model and where it runs.
    # local: transformers' continuous batching; static: our decode loop (bot/generation/static/)
    engine: EngineName = "local"
    model: str = Field(default=DEFAULT_MODEL_ID, min_length=1)
    # auto: float16 (SOLAR's own) on a GPU, float32 on a CPU
    dtype: Literal["float16", "bfloat16", "float32", "auto"] = "auto"
    device: str = "auto"
    offline: bool = False
    context_window: int | None = Field(default=None, gt=0)
    max_new_tokens: int = Field(default=512, gt=0, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    cache_blocks: int | None = Field(default=None, gt=0)
    max_batch_tokens: int | None = Field(default=None, gt=0)
    # GPU serving (local engine; unset = transformers' default). See bench/RESULTS.md, issue 5.
    cuda_graphs: bool | None = None
    compile_level: int | None = Field(default=None, ge=0, le=3)
    async_batching: bool | None = None
    kv_memory_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)  # of free GPU memory
    # Requests generating at once (more wait in the engine); openai: streams open to the server.
    max_active_requests: int | None = Field(default=None, gt=0)

    # SOLARBOT_ENGINE=openai: an OpenAI-compatible server (vLLM, `transformers serve`) does the
    # generating; SOLARBOT_MODEL still names the tokenizer used to count prompt tokens.
    openai_base_url: str | None = None  # e.g. http://gpu-1:8000/v1
    openai_model: str | None = None  # the served model's name; default: SOLARBOT_MODEL
    openai_api_key: SecretStr | None = None  # sent as "Authorization: Bearer ..."
    openai_timeout_seconds: float = Field(default=300.0, gt=0.0)

    @model_validator(mode="after")
    def _room_for_a_reply(self) -> Settings:
        window = self.context_window
        if window is not None and window <= self.max_new_tokens:
            # Not a ValueError: pydantic lets it through as it is, naming both settings.
            raise ContextWindowError(
                f"SOLARBOT_CONTEXT_WINDOW={window} not larger than SOLARBOT_MAX_NEW_TOKENS="
                f"{self.max_new_tokens}: lower SOLARBOT_MAX_NEW_TOKENS (or raise "
                "SOLARBOT_CONTEXT_WINDOW) so that prompts have room"
            )
        return self

    @field_validator("openai_base_url")
    @classmethod
    def _openai_base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://\S+", value):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8000/v1")
        return value.rstrip("/") if value is not None else None

    # Storage.
    data_dir: Path = Path("data")
    database_url: SecretStr | None = None

    # The worker.
    # Jobs one worker generates at once; unset or 0: as many as the engine runs at once
    # (Engine.max_concurrent_requests); a larger value is capped to that, with a warning.
    worker_concurrency: int | None = Field(default=None, ge=0, le=1024)
    lease_seconds: float = Field(default=60.0, ge=1.0)
    max_attempts: int = Field(default=5, gt=0, le=100)
    retry_base_seconds: float = Field(default=2.0, gt=0.0)
    retry_max_seconds: float = Field(default=300.0, gt=0.0)
    poll_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    edit_interval_seconds: float = Field(default=1.0, ge=0.0)
    # The fake engine's pause per streamed word (demos, crash and soak tests).
    fake_delay_seconds: float = Field(default=0.0, ge=0.0, le=10.0)

    # Limits enforced at intake (bot/limits.py): refused messages get a polite notice and are not
    # stored. Rates are messages per minute with a burst allowance; 0 switches a limit off.
    max_message_chars: int = Field(default=8000, gt=0)
    user_rate_per_minute: float = Field(default=10.0, ge=0.0)
    user_burst: int = Field(default=5, gt=0)
    channel_rate_per_minute: float = Field(default=30.0, ge=0.0)
    channel_burst: int = Field(default=15, gt=0)
    channel_queue_limit: int = Field(default=20, ge=0)
    # A refused user is told once per reason within this many seconds; later refusals are silent.
    refusal_notice_seconds: float = Field(default=60.0, ge=0.0, le=86_400.0)
    # Tokens (prompt + generated) one user's replies may cost per day; 0 = no quota. The day runs
    # midnight to midnight in the usage time zone (an IANA name), also used by `solarbot usage`.
    user_daily_tokens: int = Field(default=0, ge=0)
    usage_timezone: str = "UTC"

    @field_validator("usage_timezone")
    @classmethod
    def _usage_timezone(cls, value: str) -> str:
        usage_zone(value)  # raises ValueError naming the zone
        return value.strip()

    # The knowledge base (docs/knowledge-base.md): `solarbot kb` adds to this collection unless
    # told --collection; chunks aim at kb_chunk_min_tokens..kb_chunk_max_tokens SOLAR tokens.
    kb_collection: str = Field(default="default", min_length=1, max_length=128)
    kb_chunk_max_tokens: int = Field(default=300, ge=32, le=2048)
    kb_chunk_min_tokens: int = Field(default=200, ge=1, le=2048)
    # Fetching web pages and sitemaps: requests at once, per-request timeout, largest source.
    kb_fetch_concurrency: int = Field(default=4, ge=1, le=64)
    kb_fetch_timeout_seconds: float = Field(default=20.0, gt=0.0, le=600.0)
    kb_max_source_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _kb_chunk_limits(self) -> Settings:
        if self.kb_chunk_min_tokens > self.kb_chunk_max_tokens:
            # Not a ValueError: pydantic lets a ConfigError through as it is, naming both keys.
            raise ConfigError(
                f"SOLARBOT_KB_CHUNK_MIN_TOKENS={self.kb_chunk_min_tokens} is larger than "
                f"SOLARBOT_KB_CHUNK_MAX_TOKENS={self.kb_chunk_max_tokens}"
            )
        return self

    # The outgoing-webhook platform (adapters/webhook.py): replies are POSTed to this URL.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None  # sent as "Authorization: Bearer ..."
    webhook_timeout_seconds: float = Field(default=10.0, gt=0.0)
    webhook_message_limit: int = Field(default=4000, ge=100)  # characters per posted message
    # Incoming messages: POST /incoming on this port (unset = no ingress; 0 = any free port).
    webhook_port: int | None = Field(default=None, ge=0, le=65535)
    webhook_host: str = "127.0.0.1"

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://\S+", value):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/") if value is not None else None

    # Slack (the adapter starts when SOLARBOT_SLACK_BOT_TOKEN is set; see docs/slack.md).
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None  # HTTP mode: verifies every request
    slack_app_token: SecretStr | None = None  # Socket Mode: the xapp- app-level token
    slack_mode: Literal["http", "socket"] = "http"
    slack_host: str = "0.0.0.0"
    slack_port: int = Field(default=3000, ge=0, le=65535)  # 0 = any free port
    slack_path: str = "/slack/events"
    slack_command: str = "/solar"
    # Comma-separated Slack ids; empty = no restriction (workspaces, channels) / no admins.
    slack_allowed_workspaces: Annotated[tuple[str, ...], NoDecode] = ()
    slack_allowed_channels: Annotated[tuple[str, ...], NoDecode] = ()
    slack_admin_users: Annotated[tuple[str, ...], NoDecode] = ()
    slack_api_url: str = "https://slack.com/api/"
    # Human handoff: the user group pinged ("<!subteam^ID>") when someone asks for a human.
    slack_support_group: str | None = None
    # Thread replies: "native" streams (chat.startStream, standard Markdown), "edit" edits in
    # mrkdwn; /solar answers and top-level DMs are always edited (docs/slack.md, "Streaming").
    slack_streaming: Literal["native", "edit"] = "native"
    # Agents & Assistants (the app's assistant view): greet new assistant threads with these
    # suggested prompts, show "is thinking…" statuses and title threads (docs/slack.md).
    slack_assistant: bool = True
    # "title=message|title=message" (a prompt without "=" is its own title); at most 4; empty: none.
    slack_suggested_prompts: Annotated[tuple[tuple[str, str], ...], NoDecode] = (
        texts.SLACK_SUGGESTED_PROMPTS
    )

    @field_validator("slack_suggested_prompts", mode="before")
    @classmethod
    def _slack_suggested_prompts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        prompts: list[tuple[str, str]] = []
        for entry in value.split("|"):
            if not entry.strip():
                continue
            title, equals, message = entry.partition("=")
            title, message = title.strip(), (message if equals else title).strip()
            if not title or not message:
                raise ValueError(f"{entry.strip()!r}: a prompt needs a title and a message")
            if len(title) > SUGGESTED_PROMPT_TITLE_CHARS:
                raise ValueError(
                    f"{title[:20]!r}…: a title has at most {SUGGESTED_PROMPT_TITLE_CHARS} characters"
                )
            if len(message) > SUGGESTED_PROMPT_MESSAGE_CHARS:
                raise ValueError(
                    f"{title!r}: a message has at most {SUGGESTED_PROMPT_MESSAGE_CHARS} characters"
                )
            prompts.append((title, message))
        if len(prompts) > SUGGESTED_PROMPTS_MAX:
            raise ValueError(f"at most {SUGGESTED_PROMPTS_MAX} prompts (Slack shows no more)")
        return tuple(prompts)

    @field_validator(
        "slack_allowed_workspaces", "slack_allowed_channels", "slack_admin_users", mode="before"
    )
    @classmethod
    def _slack_id_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            for item in value:
                if not isinstance(item, str) or not _SLACK_ID.fullmatch(item):
                    raise ValueError(f"{item!r} is not a Slack id (comma-separated, e.g. T0123ABC)")
        return value

    @field_validator("slack_support_group")
    @classmethod
    def _slack_support_group(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"S[A-Z0-9]{2,}", value.strip()):
            raise ValueError("must be a Slack user group id (S0123ABC; not its @handle)")
        return value.strip() if value is not None else None

    @field_validator("slack_bot_token")
    @classmethod
    def _slack_bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token (xoxb-...)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _slack_app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (xapp-...)")
        return value

    @field_validator("slack_command")
    @classmethod
    def _slack_command(cls, value: str) -> str:
        if not re.fullmatch(r"/[a-z0-9_-]{1,31}", value):
            raise ValueError("must be a slash command such as /solar (lower case, no spaces)")
        return value

    @field_validator("slack_path")
    @classmethod
    def _slack_path(cls, value: str) -> str:
        if not value.startswith("/") or " " in value:
            raise ValueError("must be a URL path starting with / (e.g. /slack/events)")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _slack_api_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://\S+", value):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    # Discord (the adapter starts when SOLARBOT_DISCORD_TOKEN is set; see docs/discord.md).
    discord_token: SecretStr | None = None
    # Comma-separated Discord ids (numbers); empty = no restriction (guilds, channels, roles).
    discord_allowed_guilds: Annotated[frozenset[int], NoDecode] = frozenset()
    discord_allowed_channels: Annotated[frozenset[int], NoDecode] = frozenset()
    discord_allowed_roles: Annotated[frozenset[int], NoDecode] = frozenset()
    discord_admin_roles: Annotated[frozenset[int], NoDecode] = frozenset()
    # DMs bypass the guild/channel/role lists, so they are opt-in.
    discord_dms: bool = False
    # Human handoff: the role pinged ("<@&ID>") when someone asks for a human.
    discord_support_role: int | None = Field(default=None, gt=0, lt=2**64)
    # Slash commands: registered in this server only (appear at once; for trying them out), else
    # globally (every server the bot is in; Discord may take up to an hour to show changes).
    discord_command_guild: int | None = Field(default=None, gt=0, lt=2**64)

    # Human handoff: a message containing one of these (comma-separated, any case) makes the bot
    # stop answering in that conversation and ping the support group/role; empty = off.
    handoff_keywords: Annotated[tuple[str, ...], NoDecode] = ("talk to a human", "human please")
    # The support group/role is pinged at most once per conversation and per asker within the
    # cooldown, and at most HANDOFF_WORKSPACE_PINGS times per workspace within the window (kept in
    # the database: every ingress process agrees). Over them the handoff still happens, unpinged.
    # 0 switches a rule off.
    handoff_ping_cooldown_seconds: float = Field(default=900.0, ge=0.0, le=7 * 86_400.0)
    handoff_workspace_pings: int = Field(default=5, ge=0, le=10_000)
    handoff_workspace_window_seconds: float = Field(default=3600.0, ge=0.0, le=7 * 86_400.0)

    # Answering from a channel's knowledge base (docs/knowledge-base-answering.md): passages
    # retrieved per question, their budget in the prompt (SOLAR tokens), and the share of the
    # question's words the best one must contain for a strict channel to answer at all.
    kb_passages: int = Field(default=5, ge=1, le=20)
    kb_passage_tokens: int = Field(default=1500, ge=64, le=16_384)
    kb_min_relevance: float = Field(default=0.5, ge=0.0, le=1.0)
    # Optional hybrid retrieval: a local folder with a sentence-embedding model (transformers
    # format, never downloaded); unset = keyword search only (bot/kb/embeddings.py).
    kb_embeddings: Path | None = None

    @field_validator("kb_embeddings")
    @classmethod
    def _kb_embeddings(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        if not (value / "config.json").is_file():
            raise ValueError(f"{value} is not a folder holding a model (no config.json in it)")
        return value

    # Attached files (docs/support.md, "Attached files"): text-like files and PDFs on a question are
    # read into its turn, at most this many SOLAR tokens of them per message (0 = files are not
    # read); larger files are not downloaded (bytes); per-file download timeout; downloads at once
    # per platform.
    attachment_token_budget: int = Field(default=1500, ge=0, le=16_384)
    attachment_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    attachment_timeout_seconds: float = Field(default=20.0, gt=0.0, le=300.0)
    attachment_concurrency: int = Field(default=4, ge=1, le=64)

    # Support hours per workspace (bot/support_hours.py): outside them a handoff's ping to the
    # support group waits until they start; empty = always staffed.
    support_hours: str = ""
    # Remind the support group once when nobody but the asker wrote within this many minutes of a
    # handoff's ping (0 = no reminders).
    handoff_reminder_minutes: float = Field(default=0.0, ge=0.0, le=7 * 24 * 60.0)

    @field_validator("support_hours")
    @classmethod
    def _support_hours(cls, value: str) -> str:
        parse_support_hours(value)  # raises ValueError saying what is wrong
        return value

    @field_validator("handoff_keywords", mode="before")
    @classmethod
    def _handoff_keywords(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(" ".join(str(part).lower().split()) for part in value)
        return value

    @field_validator(
        "discord_allowed_guilds",
        "discord_allowed_channels",
        "discord_allowed_roles",
        "discord_admin_roles",
        mode="before",
    )
    @classmethod
    def _discord_id_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple, set, frozenset)):
            ids: set[int] = set()
            for item in value:
                text = str(item).strip()
                if isinstance(item, bool) or not text.isdigit() or not 0 < int(text) < 2**64:
                    raise ValueError(
                        f"{item!r} is not a Discord id (comma-separated numbers, "
                        "e.g. 123456789012345678; Developer Mode > Copy ID)"
                    )
                ids.add(int(text))
            return frozenset(ids)
        return value

    @field_validator("discord_token")
    @classmethod
    def _discord_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not token:
            raise ValueError("is empty (Developer Portal > your application > Bot > Reset Token)")
        if token.lower().startswith("bot ") or any(char.isspace() for char in token):
            raise ValueError("must be the bare bot token, without 'Bot ' or spaces")
        return SecretStr(token)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    # Prometheus /metrics, /healthz and /readyz (docs/operations.md); unset = off, 0 = any free port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or value.startswith("cuda:"):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    def secret_values(self) -> list[str]:
        """Every secret setting's value (and the database password): logs mask them."""
        values = [
            value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        ]
        if self.database_url is not None:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                password = make_url(self.database_url.get_secret_value()).password
            except ArgumentError:
                password = None
            if password:
                values.append(str(password))
        return [value for value in values if value]

    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'solarbot.db').resolve()}"


def _describe(error: ErrorDetails) -> str:
    location = error["loc"]
    key = ENV_PREFIX + "_".join(str(part) for part in location if isinstance(part, str)).upper()
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    return f"{key}: {message}"


def load_settings(
    *, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read and validate settings once. ``environ`` replaces os.environ (tests use it)."""
    source = os.environ if environ is None else environ
    for key in source:
        if key.startswith(ENV_PREFIX) and not key.startswith(IGNORED_PREFIXES):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in Settings.model_fields:
                raise ConfigError(
                    f"{key}: unknown setting (see the configuration table in README.md)"
                )
    try:
        if environ is None:
            return Settings(_env_file=env_file)
        prefixed = {
            key[len(ENV_PREFIX) :].lower(): value
            for key, value in environ.items()
            if key.startswith(ENV_PREFIX)
        }
        return Settings.model_validate(prefixed)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_describe(first)) from None
