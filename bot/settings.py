"""Configuration, read once at start-up from the environment (and ``.env``) with a SOLARBOT_ prefix.

``load_settings()`` is the only entry point: it returns a frozen, typed ``Settings`` or raises
``ConfigError`` with one line naming the bad key, e.g. ``SOLARBOT_MAX_NEW_TOKENS: must be > 0``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError
from bot.generation.solar import DEFAULT_MODEL_ID

ENV_PREFIX = "SOLARBOT_"
# Variables under these prefixes belong to the test suite, not to the service.
IGNORED_PREFIXES = ("SOLARBOT_TEST_",)

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
    engine: Literal["local", "fake"] = "local"
    model: str = Field(default=DEFAULT_MODEL_ID, min_length=1)
    dtype: Literal["float16", "bfloat16", "float32", "auto"] = "float16"
    device: str = "auto"
    offline: bool = False
    context_window: int | None = Field(default=None, gt=0)
    max_new_tokens: int = Field(default=512, gt=0, le=8192)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    cache_blocks: int | None = Field(default=None, gt=0)
    max_batch_tokens: int | None = Field(default=None, gt=0)

    # Storage.
    data_dir: Path = Path("data")
    database_url: SecretStr | None = None

    # The worker.
    worker_concurrency: int = Field(default=8, gt=0, le=1024)
    lease_seconds: float = Field(default=60.0, ge=1.0)
    max_attempts: int = Field(default=5, gt=0, le=100)
    retry_base_seconds: float = Field(default=2.0, gt=0.0)
    retry_max_seconds: float = Field(default=300.0, gt=0.0)
    poll_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    edit_interval_seconds: float = Field(default=1.0, ge=0.0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
