"""What a failed Discord REST call means for the worker: a ``DeliveryError`` (with the wait
Discord asked for, if any), shared by channel replies and interaction answers."""

from __future__ import annotations

import contextlib

import discord

from bot.errors import DeliveryError


def delivery_error(exc: BaseException) -> DeliveryError:
    if isinstance(exc, discord.RateLimited):
        return DeliveryError(
            f"Discord rate limit ({exc.retry_after:.1f}s)", retry_after=exc.retry_after
        )
    if isinstance(exc, discord.HTTPException):
        retry_after: float | None = None
        if exc.status == 429:
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(exc.response.headers.get("Retry-After", "5"))
        return DeliveryError(f"Discord HTTP {exc.status}: {exc.text}", retry_after=retry_after)
    return DeliveryError(f"Discord unreachable: {type(exc).__name__}: {exc}")
