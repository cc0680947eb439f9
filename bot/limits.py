"""Intake limits: message length, per-user and per-channel rates, queue length per channel.

The core enforces them (``bot.intake.Intake`` asks ``Limits.check`` before storing anything), so
every platform gets the same rules and a refused message leaves nothing in the database. A refusal
carries the polite text the user is shown (``bot.texts``), including how long to wait. Chat
sub-commands take tokens from the same buckets (``admit_command``): their answers are posts too.
A user is told a refusal once per reason and window (``first_notice``); a flood of refused
messages gets one notice, never one each.

A daily token quota per user (``user_daily_tokens``; ``bot.quota`` says when a day starts and
resets) refuses a user whose replies of the day already cost that many model tokens (prompt plus
generated, summed by the repository over the day's jobs: ``Repository.tokens_used``); the notice
says how long until the allowance resets.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo

from bot import quota, texts
from bot.dedupe import dedupe_key
from bot.records import Incoming

Clock = Callable[[], float]
WallClock = Callable[[], datetime]  # aware datetimes: when the usage day resets


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    # A refused user is told once per reason within this many seconds (or until the wait it was
    # told to keep is over, if longer); later refusals in that window are silent.
    refusal_notice_seconds: float = 60.0
    # Human handoff pings (``Intake``, ``Repository.claim_handoff_ping``): at most one per
    # conversation and per asker within the cooldown, at most ``handoff_workspace_pings`` per
    # workspace within the window. 0 switches a rule off.
    handoff_ping_cooldown_seconds: float = 900.0
    handoff_workspace_pings: int = 5
    handoff_workspace_window_seconds: float = 3600.0
    # Tokens (prompt + generated) a user's replies may cost per day (0: no quota); the day runs
    # from midnight to midnight in ``usage_zone``.
    user_daily_tokens: int = 0
    usage_zone: tzinfo = UTC


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """Why a message was not accepted, and what the user is told."""

    reason: str  # "too_long", "user_rate", "channel_rate", "queue_full" or "daily_tokens"
    notice: str
    retry_after: float | None = None
    quiet: bool = False  # the user was told already within the window: say nothing


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
    def __init__(
        self,
        settings: LimitSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: WallClock = utc_now,
    ):
        """``clock`` paces the rate buckets and notice windows; ``wall_clock`` places the usage
        day (both injectable for tests)."""
        self.settings = settings or LimitSettings()
        self._clock = clock
        self.wall_clock = wall_clock
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
        # (user key, reason) -> until when a refusal for it is not told again.
        self._told: OrderedDict[str, float] = OrderedDict()

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

    @property
    def quota_enabled(self) -> bool:
        return self.settings.user_daily_tokens > 0

    def usage_day_start(self, now: datetime) -> datetime:
        """Where the day whose tokens count against the quota began (UTC)."""
        return quota.day_start(now, self.settings.usage_zone)

    def check_quota(self, used: int, *, now: datetime) -> Refusal | None:
        """Refuse when the user's replies of the day already cost ``used`` >= the daily quota;
        the notice says how long until midnight in the usage zone, and is told once until then."""
        allowance = self.settings.user_daily_tokens
        if allowance <= 0 or used < allowance:
            return None
        zone = self.settings.usage_zone
        wait = (quota.next_reset(now, zone) - now).total_seconds()
        return Refusal(
            reason="daily_tokens",
            notice=texts.LIMIT_DAILY_TOKENS.format(
                quota=allowance, wait=quota.describe_wait(wait), zone=zone_name(zone)
            ),
            retry_after=wait,
        )

    def admit(self, incoming: Incoming) -> Admission | Refusal:
        """Take one token from the user's and the channel's bucket, or refuse with the wait."""
        return self._take(
            user_key=dedupe_key(incoming.platform, incoming.workspace, incoming.author_id),
            channel_key=dedupe_key(incoming.platform, incoming.workspace, incoming.channel),
        )

    def _take(self, *, user_key: str, channel_key: str) -> Admission | Refusal:
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

    def admit_command(
        self, *, platform: str, workspace: str, channel: str, author_id: str
    ) -> Admission | Refusal:
        """A chat sub-command (``!help``, ``/solar status``) takes a token from the same buckets
        as a message: its answer is something the bot posts too."""
        return self._take(
            user_key=dedupe_key(platform, workspace, author_id),
            channel_key=dedupe_key(platform, workspace, channel),
        )

    def first_notice(
        self, refusal: Refusal, *, platform: str, workspace: str, author_id: str
    ) -> Refusal:
        """``refusal``, marked ``quiet`` when this user was told the same reason within the
        window (``refusal_notice_seconds``, or the wait they were told to keep if longer): a
        flood of refused messages gets one notice, not one each."""
        key = dedupe_key(platform, workspace, author_id, refusal.reason)
        with self._lock:
            now = self._clock()
            until = self._told.get(key)
            if until is not None and now < until:
                return replace(refusal, quiet=True)
            window = max(self.settings.refusal_notice_seconds, refusal.retry_after or 0.0)
            self._told[key] = now + window
            self._told.move_to_end(key)
            if len(self._told) > MAX_BUCKETS:
                self._told.popitem(last=False)
            return refusal


def zone_name(zone: tzinfo) -> str:
    """``Europe/Berlin`` for a zone read from its IANA name, ``UTC`` for UTC."""
    return str(getattr(zone, "key", None) or zone.tzname(None) or "UTC")
