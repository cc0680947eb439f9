"""The service on a clock a test moves, for support hours and handoff reminders: the real Service
around the real Slack adapter (against tests/support/slack_fake.py), the fake engine, SQLite,
support hours Mon-Fri 09:00-17:00 Berlin and a 30-minute reminder (``serving``)."""

from __future__ import annotations

import asyncio
import contextlib
import zoneinfo
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from adapters.slack import SlackAdapter, SlackOptions
from bot.generation.fake import FakeEngine
from bot.service import Service
from bot.settings import load_settings
from storage.repository import Repository
from tests.support.slack_fake import BOT_TOKEN, SIGNING_SECRET, FakeSlack, event_body, signed_post

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
ASKED = "1690002000.000001"  # the ts of Alice's message asking for a human (= its thread)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class HoursRig:
    fake: FakeSlack
    service: Service
    repository: Repository
    url: str
    session: aiohttp.ClientSession

    async def event(self, event: dict[str, Any]) -> None:
        status, _ = await signed_post(
            self.session, self.url, event_body(event), content_type="application/json"
        )
        assert status == 200

    def thread(self) -> list[str]:
        return [m.text for m in self.fake.thread("C0GENERAL", ASKED)]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, fake: FakeSlack, clock: Clock) -> AsyncIterator[HoursRig]:
    """One run of the service (Slack adapter, fake engine, SQLite in ``tmp_path``) on ``clock``."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_HANDOFF_KEYWORDS": "talk to a human",
            "SOLARBOT_SUPPORT_HOURS": "Mon-Fri 09:00-17:00 Europe/Berlin",
            "SOLARBOT_HANDOFF_REMINDER_MINUTES": "30",
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    slack = SlackAdapter(
        SlackOptions(
            bot_token=BOT_TOKEN,
            signing_secret=SIGNING_SECRET,
            host="127.0.0.1",
            port=0,
            api_url=fake.api_url,
            support_group="S0SUPPORT",
            model_id="fake",
        )
    )
    service = Service(
        settings=settings,
        repository=repository,
        engine=FakeEngine(),
        adapters=[slack],
        drain_seconds=1,
        clock=clock,
    )
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(10):
        while service.worker is None:
            await asyncio.sleep(0.01)
    session = aiohttp.ClientSession()
    try:
        url = f"http://127.0.0.1:{slack.http_port}/slack/events"
        yield HoursRig(fake, service, repository, url, session)
    finally:
        await session.close()
        service.stopping.set()
        async with asyncio.timeout(10):
            await task
        repository.close()


async def settle(rig: HoursRig) -> None:
    """Let the follow-up loop run a few rounds (it polls every 0.5 s)."""
    await asyncio.sleep(1.2)
