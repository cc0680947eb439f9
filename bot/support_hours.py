"""Support hours: when the humans behind a handoff are on duty, per workspace.

SOLARBOT_SUPPORT_HOURS lists schedules separated by ``;``. Each is ``DAYS HH:MM-HH:MM ZONE``,
optionally prefixed ``WORKSPACE=`` (a Slack team id or Discord guild id; without it, the schedule
of every other workspace): ``Mon-Fri 09:00-17:00 Europe/Berlin; T0123=Mon-Sat 08:00-20:00
America/New_York``. DAYS are English three-letter day names, single or as ranges, joined by
commas (``Mon-Fri``, ``Mon,Wed,Fri``, ``Sat-Sun``); the hours are local wall-clock time in the IANA
zone ``ZONE``, the end after the start (``24:00`` = midnight at the end of the day). A workspace
with no schedule and no default is always staffed. Empty: always staffed (the default).

Outside the hours a handoff is announced to the asker with when the team is back, and the ping to
the support group is held until then (``bot.handoff_followups``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from bot.quota import usage_zone

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
_ENTRY = re.compile(
    r"(?:(?P<workspace>[^=\s]+)\s*=\s*)?(?P<days>[A-Za-z,\-\s]+?)\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)"
)


@dataclass(frozen=True, kw_only=True)
class SupportHours:
    """Open on ``days`` (0 = Monday) from ``start`` to ``end`` minutes after local midnight."""

    days: frozenset[int]
    start: int
    end: int
    zone: tzinfo

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute + local.second / 60
        return local.weekday() in self.days and self.start <= minute < self.end

    def next_opening(self, now: datetime) -> datetime:
        """``now`` when open, else the next instant (UTC) the hours start."""
        if self.is_open(now):
            return now
        today = now.astimezone(self.zone).date()
        for offset in range(8):
            day = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            hours, minutes = divmod(self.start, 60)
            # A wall time in a daylight-saving gap is normalised to the instant the gap ends.
            opening = datetime(
                day.year, day.month, day.day, hours, minutes, tzinfo=self.zone
            ).astimezone(UTC)
            if opening > now:
                return opening
        raise AssertionError("a weekly schedule with days opens within eight days")

    def describe_start(self, at: datetime) -> str:
        """``at`` (an opening) as the asker reads it: ``Mon 09:00``."""
        local = at.astimezone(self.zone)
        return f"{DAY_NAMES[local.weekday()].title()} {local:%H:%M}"


@dataclass(frozen=True, kw_only=True)
class SupportSchedule:
    default: SupportHours | None = None
    by_workspace: Mapping[str, SupportHours] = field(default_factory=dict)

    def hours_for(self, workspace: str) -> SupportHours | None:
        """The workspace's hours; None = always staffed."""
        return self.by_workspace.get(workspace, self.default)

    @property
    def configured(self) -> bool:
        return self.default is not None or bool(self.by_workspace)


def parse_support_hours(text: str) -> SupportSchedule:
    """SOLARBOT_SUPPORT_HOURS (see the module); ValueError saying what is wrong."""
    default: SupportHours | None = None
    by_workspace: dict[str, SupportHours] = {}
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        found = _ENTRY.fullmatch(entry)
        if found is None:
            raise ValueError(
                f"cannot read {entry!r}: write DAYS HH:MM-HH:MM ZONE, e.g. "
                "'Mon-Fri 09:00-17:00 Europe/Berlin', optionally prefixed 'WORKSPACE='"
            )
        start, end = _minutes(found["start"]), _minutes(found["end"])
        if not start < end:
            raise ValueError(f"in {entry!r} the hours must end after they start")
        hours = SupportHours(
            days=_days(found["days"], entry), start=start, end=end, zone=usage_zone(found["zone"])
        )
        workspace = found["workspace"]
        if workspace is None:
            if default is not None:
                raise ValueError("more than one schedule without a WORKSPACE= prefix")
            default = hours
        elif workspace in by_workspace:
            raise ValueError(f"workspace {workspace!r} has more than one schedule")
        else:
            by_workspace[workspace] = hours
    return SupportSchedule(default=default, by_workspace=by_workspace)


def _minutes(clock: str) -> int:
    hours, minutes = (int(part) for part in clock.split(":"))
    if minutes >= 60 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{clock!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str, entry: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.replace(" ", "").lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise ValueError(f"in {entry!r}, {part!r} is not a day or range of days (Mon-Fri)")
        low = DAY_NAMES.index(first)
        high = DAY_NAMES.index(last) if last else low
        if high < low:
            raise ValueError(f"in {entry!r}, the range {part!r} runs backwards")
        days.update(range(low, high + 1))
    return frozenset(days)
