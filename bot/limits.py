"""Intake limits: message length, per-user and per-channel rates, queue length per channel.

The core enforces them (``bot.intake.Intake`` asks ``Limits.check`` before storing anything), so
every platform gets the same rules and a refused message leaves nothing in the database. A refusal
carries the polite text the user is shown (``bot.texts``), including how long to wait.

Rates are token buckets held in this process's memory: ``rate_per_minute`` tokens flow in per
minute up to ``burst``; each accepted message takes one. With several ingress processes each keeps
its own buckets (the limit is per process). A rate of 0 switches that limit off; so does a queue
limit of 0.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bot import texts
from bot.models import Incoming

Clock = Callable[[], float]

# Buckets kept per key; the least recently used go first (a full bucket forgets nothing useful).
MAX_BUCKETS = 100_000


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    max_message_chars: int = 8000
    user_rate_per_minute: float = 10.0
    user_burst: int = 5
    channel_rate_per_minute: float = 30.0
    channel_burst: int = 15
    channel_queue_limit: int = 20


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Why a message was not accepted, and what the user is told."""

    reason: str  # "too_long", "user_rate", "channel_rate" or "queue_full"
    notice: str
    retry_after: float | None = None


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` tokens per second."""

    def __init__(self, *, rate: float, capacity: int, now: float) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 = now)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0

    def give_back(self) -> None:
        self.tokens = min(self.capacity, self.tokens + 1.0)


class _Buckets:
    def __init__(self, *, per_minute: float, burst: int, clock: Clock) -> None:
        self._rate = per_minute / 60.0
        self._burst = burst
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def get(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate=self._rate, capacity=self._burst, now=self._clock())
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket


@dataclass(frozen=True, kw_only=True)
class Admission:
    """Tokens taken for an accepted message; ``refund`` returns them (a duplicate event)."""

    buckets: tuple[TokenBucket, ...] = ()

    def refund(self) -> None:
        for bucket in self.buckets:
            bucket.give_back()


class Limits:
    def __init__(self, settings: LimitSettings | None = None, *, clock: Clock = time.monotonic):
        self.settings = settings or LimitSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._users = _Buckets(
            per_minute=self.settings.user_rate_per_minute,
            burst=self.settings.user_burst,
            clock=clock,
        )
        self._channels = _Buckets(
            per_minute=self.settings.channel_rate_per_minute,
            burst=self.settings.channel_burst,
            clock=clock,
        )

    def check_length(self, incoming: Incoming) -> Refusal | None:
        limit = self.settings.max_message_chars
        if len(incoming.text) <= limit:
            return None
        return Refusal(
            reason="too_long",
            notice=texts.LIMIT_TOO_LONG.format(length=len(incoming.text), limit=limit),
        )

    def queue_full(self) -> Refusal:
        """The refusal when the channel already has ``channel_queue_limit`` pending jobs (the
        repository counts them in the enqueue's own transaction)."""
        limit = self.settings.channel_queue_limit
        return Refusal(reason="queue_full", notice=texts.LIMIT_QUEUE_FULL.format(limit=limit))

    def admit(self, incoming: Incoming) -> Admission | Refusal:
        """Take one token from the user's and the channel's bucket, or refuse with the wait."""
        user_key = f"{incoming.platform}:{incoming.workspace}:{incoming.author_id}"
        channel_key = f"{incoming.platform}:{incoming.workspace}:{incoming.channel}"
        with self._lock:
            now = self._clock()
            checks: list[tuple[str, TokenBucket]] = []
            if self._users.enabled:
                checks.append(("user_rate", self._users.get(user_key)))
            if self._channels.enabled:
                checks.append(("channel_rate", self._channels.get(channel_key)))
            for reason, bucket in checks:
                wait = bucket.wait_time(now)
                if wait > 0:
                    seconds = max(1, math.ceil(wait))
                    template = (
                        texts.LIMIT_USER_RATE if reason == "user_rate" else texts.LIMIT_CHANNEL_RATE
                    )
                    return Refusal(
                        reason=reason, notice=template.format(seconds=seconds), retry_after=wait
                    )
            for _, bucket in checks:
                bucket.take(now)
            return Admission(buckets=tuple(bucket for _, bucket in checks))
