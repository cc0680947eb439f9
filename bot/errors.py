"""The one exception hierarchy of solarbot. Everything we raise on purpose derives from SolarbotError."""

from __future__ import annotations


class SolarbotError(Exception):
    """Root of every error solarbot raises on purpose."""


class ConfigError(SolarbotError):
    """A setting is missing or invalid. The message names the environment key."""


class ContextWindowError(ConfigError):
    """The context window leaves no room for a reply of SOLARBOT_MAX_NEW_TOKENS tokens (the setting,
    or the positions the model's config allows). The message names the settings."""


class StorageError(SolarbotError):
    """The database could not be reached or migrated."""


class ModelNotFoundError(SolarbotError):
    """The model could not be found locally and the hub is unreachable."""


class GenerationError(SolarbotError):
    """The engine failed while generating a reply."""


class EngineClosedError(GenerationError):
    """The engine was asked to generate after it was closed (or before it started)."""


class PromptTooLongError(SolarbotError):
    """Even the system prompt plus a truncated newest message cannot fit the context window."""


class DeliveryError(SolarbotError):
    """Posting or editing a reply on a platform failed. Retried with backoff by the worker.

    ``kind`` labels the ``solarbot_delivery_errors_total`` metric; without one it is
    ``rate_limited`` when the platform asked to wait (``retry_after``), else ``failed``."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind


class InvalidIncomingError(SolarbotError):
    """An incoming message is malformed (empty text, missing ids)."""


class UpscaleError(SolarbotError):
    """Depth up-scaling a model failed (bad base, bad --drop, output folder, disk space)."""


class KnowledgeBaseError(SolarbotError):
    """A knowledge-base source that cannot be read or stored (one line says which and why)."""
