"""Support hours and reminders for handoffs: what is posted to the support group after the handoff.

- Outside support hours (``bot.support_hours``, SOLARBOT_SUPPORT_HOURS) a handoff tells the asker
  when the team is back, and the ping to the support group is held: a follow-up of kind ``ping``,
  due when the hours start, is stored (``Repository.schedule_followup``) instead of pinging.
- With SOLARBOT_HANDOFF_REMINDER_MINUTES, each ping (at the handoff, or a held one when it is
  sent) schedules a ``reminder`` that many minutes later; someone other than the asker writing in
  the conversation cancels it (``Repository.human_wrote_in_handoff``), and so does ``resume``.

``HandoffFollowups.run`` sends what is due, in every process that has the platforms' adapters: a
follow-up is claimed in the database before it is posted (one process sends it) and marked sent
after, so it is sent once, after a restart too. A process that dies between the platform taking
the post and the database recording it sends it once more when its lease runs out (seconds of
exposure, once). The clock is injectable: tests move time, not sleep through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot import quota, texts
from bot.delivery import ChatAdapter, HandoffNotifier, ReplyTarget
from bot.hygiene import clean_outgoing
from bot.limits import WallClock, utc_now, zone_name
from bot.records import ClaimedFollowup, FollowupKind
from bot.support_hours import SupportHours, SupportSchedule
from storage.repository import Repository

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class FollowupPolicy:
    """When the support team is on duty, and when to remind it (0 minutes: never)."""

    schedule: SupportSchedule = field(default_factory=SupportSchedule)
    reminder_minutes: float = 0.0
    clock: WallClock = utc_now

    @property
    def active(self) -> bool:
        return self.schedule.configured or self.reminder_minutes > 0

    def reminder_due(self, pinged_at: datetime) -> datetime | None:
        if self.reminder_minutes <= 0:
            return None
        return pinged_at + timedelta(minutes=self.reminder_minutes)


def back_at(hours: SupportHours, now: datetime) -> str:
    """When a closed support team is back, for the asker: ``Mon 09:00 Europe/Berlin time, in
    14 h 30 min``."""
    opening = hours.next_opening(now)
    return texts.HANDOFF_BACK.format(
        when=hours.describe_start(opening),
        zone=zone_name(hours.zone),
        wait=quota.describe_wait((opening - now).total_seconds()),
    )


class HandoffFollowups:
    """Sends the held pings and reminders that are due (see the module)."""

    def __init__(
        self,
        repository: Repository,
        adapters: Mapping[str, ChatAdapter],
        *,
        policy: FollowupPolicy,
        poll_seconds: float = 15.0,
    ) -> None:
        self._repository = repository
        self._adapters = adapters
        self._policy = policy
        self._poll_seconds = poll_seconds
        # The platforms this process can ping on: the others' follow-ups are left to their own.
        self._platforms = tuple(
            name for name, adapter in adapters.items() if isinstance(adapter, HandoffNotifier)
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Send what is due every ``poll_seconds`` until ``stopping`` is set."""
        while not stopping.is_set():
            try:
                await self.send_due()
            except Exception:  # the database is away for a moment: the next round retries
                log.exception("could not send the due handoff follow-ups")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._poll_seconds)

    async def send_due(self) -> int:
        """Post every follow-up due now; returns how many were sent."""
        now = self._policy.clock()
        claimed = await asyncio.to_thread(
            self._repository.claim_due_followups,
            lease_seconds=LEASE_SECONDS,
            platforms=self._platforms,
            now=now,
        )
        sent = 0
        for followup in claimed:
            sent += await self._send(followup, now)
        return sent

    async def _send(self, followup: ClaimedFollowup, now: datetime) -> int:
        adapter = self._adapters.get(followup.conversation.platform)
        if not isinstance(adapter, HandoffNotifier):  # not claimed: ``platforms`` filters
            return 0
        ago = quota.describe_wait((now - followup.asked_at).total_seconds())
        template = (
            texts.HANDOFF_HELD_PING
            if followup.kind is FollowupKind.PING
            else texts.HANDOFF_REMINDER
        )
        target = ReplyTarget(
            job_id=followup.job_id,
            conversation=followup.conversation,
            reply_target=followup.reply_target,
            job_key=followup.job_key,
        )
        try:
            await adapter.ping_support(target, clean_outgoing(template.format(ago=ago)))
        except Exception as exc:  # the claim runs out and the follow-up is tried again then
            log.warning(
                "could not send a handoff %s (retried in %.0f s): %s",
                followup.kind.value,
                LEASE_SECONDS,
                exc,
            )
            return 0
        if not await asyncio.to_thread(self._repository.finish_followup, followup, now=now):
            log.warning("handoff %s %s sent after its claim ran out", followup.kind, followup.id)
        log.info("sent the handoff %s for job %s", followup.kind.value, followup.job_id)
        due = self._policy.reminder_due(now)
        if followup.kind is FollowupKind.PING and due is not None:
            await asyncio.to_thread(
                self._repository.schedule_followup,
                job_id=followup.job_id,
                kind=FollowupKind.REMINDER,
                due_at=due,
                asked_at=followup.asked_at,
            )
        return 1
