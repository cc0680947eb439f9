"""The usage day: when a user's daily token allowance (SOLARBOT_USER_DAILY_TOKENS) starts and resets.

A day runs from midnight to midnight in the usage time zone (SOLARBOT_USAGE_TIMEZONE, an IANA
name; UTC by default). Days are computed on the local calendar, so a day with a daylight-saving
change is 23 or 25 hours long, and a midnight that does not exist in the zone (a change at 00:00)
starts the day at the first instant after the gap. ``solarbot usage --days N`` counts N such days,
today included.
"""

from __future__ import annotations

import math
import zoneinfo
from datetime import UTC, datetime, timedelta, tzinfo

SECONDS_PER_MINUTE = 60
MINUTES_PER_HOUR = 60


def usage_zone(name: str) -> tzinfo:
    """The time zone called ``name`` (``UTC``, ``Europe/Berlin``, ...); ValueError if unknown.
    UTC needs no time-zone database; other names need the system's or the ``tzdata`` package."""
    if name.strip().upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return zoneinfo.ZoneInfo(name.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or "
            "America/New_York (if such names fail everywhere, install the tzdata package)"
        ) from None


def day_start(now: datetime, zone: tzinfo) -> datetime:
    """The instant (UTC) the usage day that contains ``now`` began."""
    local = now.astimezone(zone)
    return _midnight(local.year, local.month, local.day, zone)


def next_reset(now: datetime, zone: tzinfo) -> datetime:
    """The instant (UTC) the usage day that contains ``now`` ends: the next midnight."""
    local = now.astimezone(zone).date() + timedelta(days=1)
    return _midnight(local.year, local.month, local.day, zone)


def days_start(now: datetime, zone: tzinfo, days: int) -> datetime:
    """The start of the ``days`` usage days that end with today (``days`` = 1: today)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    local = now.astimezone(zone).date() - timedelta(days=days - 1)
    return _midnight(local.year, local.month, local.day, zone)


def _midnight(year: int, month: int, day: int, zone: tzinfo) -> datetime:
    # A wall time in a gap (fold=0) maps to the instant the gap ends once normalised through UTC;
    # a repeated one to its first occurrence.
    return datetime(year, month, day, tzinfo=zone).astimezone(UTC)


def describe_wait(seconds: float) -> str:
    """``seconds`` as people say it, rounded up to the minute: ``3 h 05 min``, ``12 min``."""
    minutes = max(1, math.ceil(seconds / SECONDS_PER_MINUTE))
    hours, minutes = divmod(minutes, MINUTES_PER_HOUR)
    if hours == 0:
        return f"{minutes} min"
    return f"{hours} h {minutes:02d} min"
