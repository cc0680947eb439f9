"""What the Slack tests share: one running service (the real Service: intake, SQLite queue,
worker) around the real Slack adapter (slack-bolt + slack_sdk) talking to tests/support/slack_fake.py,
with an HTTP session for correctly signed requests to the adapter's endpoint, and the shapes of the
events and commands the tests send.

``start_rig`` covers the edit-based path (mrkdwn, ``chat.update``) unless ``streaming="native"``
is passed (tests/platforms/test_slack_native_stream.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from adapters.slack import SlackAdapter, SlackOptions
from bot.generation.fake import FakeEngine
from bot.records import ConversationKey
from bot.settings import load_settings
from storage.repository import Repository
from tests.support.rig import ServiceRig
from tests.support.slack_fake import (
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    command_body,
    event_body,
    signed_post,
)

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
ADMIN = "U0ADMIN"


@dataclass(kw_only=True)
class Rig(ServiceRig[SlackAdapter, FakeEngine]):
    """The real Service around the Slack adapter, with the fake Slack it talks to and an HTTP
    session for signed requests to the adapter's endpoint."""

    fake: FakeSlack
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.http_port}/slack/events"

    async def command(
        self, text: str, *, user: str = "U0ALICE", channel: str = "C0GENERAL", name: str = "r1"
    ) -> tuple[int, str, float]:
        body = command_body(
            text, response_url=self.fake.response_url(name), user=user, channel=channel
        )
        started = time.monotonic()
        status, answer = await signed_post(self.session, self.url, body, content_type=FORM)
        return status, answer, time.monotonic() - started

    async def event(
        self, event: dict[str, Any], *, event_id: str | None = None, **headers: str
    ) -> int:
        body = event_body(event, event_id=event_id)
        status, _ = await signed_post(
            self.session, self.url, body, content_type=JSON, headers=headers
        )
        return status

    async def until(
        self, condition: Callable[[], bool], *, within: float = 15.0, poll: float = 0.05
    ) -> None:
        await self.fake.wait_for(condition, within=within)

    def stored(self, channel: str, thread: str = "") -> list[tuple[str, str]]:
        key = ConversationKey(platform="slack", workspace=TEAM, channel=channel, thread=thread)
        return [(m.role.value, m.text) for m in self.repository.messages(key)]


@contextlib.asynccontextmanager
async def start_rig(
    tmp_path: Path,
    fake: FakeSlack,
    *,
    engine: FakeEngine | None = None,
    environ: Mapping[str, str] | None = None,
    **adapter: Any,
) -> AsyncIterator[Rig]:
    """``environ``: more SOLARBOT_* settings (limits, handoff pings) for the service."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_SYSTEM_PROMPT": "You are a test bot.",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_RETRY_BASE_SECONDS": "0.05",
            "SOLARBOT_RETRY_MAX_SECONDS": "0.2",
            **(environ or {}),
        }
    )
    options: dict[str, Any] = {
        "bot_token": BOT_TOKEN,
        "signing_secret": SIGNING_SECRET,
        "host": "127.0.0.1",
        "port": 0,
        "api_url": fake.api_url,
        "admin_users": frozenset({ADMIN}),
        "model_id": "fake-solar",
        "default_system_prompt": settings.system_prompt,
        "edit_interval": 0.02,
        # This file covers the edit-based path (mrkdwn, chat.update) on every surface; native
        # streaming is tests/platforms/test_slack_native_stream.py.
        "streaming": "edit",
    }
    options.update(adapter)
    repository = Repository.open(settings.resolved_database_url())
    async with aiohttp.ClientSession() as session:
        rig = await Rig.serve(
            settings,
            SlackAdapter(SlackOptions(**options)),
            repository=repository,
            engine=engine or FakeEngine(delay_per_chunk=0.002),
            fake=fake,
            session=session,
        )
        try:
            yield rig
        finally:
            await session.close()
            await rig.stop()
            rig.close()


def ack_text(body: str) -> str:
    """What an ack showed the user: bolt answers a bare text as text/plain, else JSON."""
    return str(json.loads(body)["text"]) if body.startswith("{") else body


def mention(
    text: str, *, ts: str, thread_ts: str | None = None, channel: str = "C0GENERAL"
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


async def say(rig: Rig, text: str, *, user: str, name: str) -> str:
    """``/solar TEXT`` by ``user``; returns the ephemeral answer."""
    await rig.command(text, user=user, name=name)
    await rig.until(lambda: any(r["_name"] == name for r in rig.fake.responses))
    return str(next(r for r in rig.fake.responses if r["_name"] == name)["text"])


def slack_settings(rig: Rig) -> tuple[object, ...]:
    config = rig.repository.channel_config(platform="slack", workspace=TEAM, channel="C0GENERAL")
    return (config.system_prompt, config.enabled, config.max_reply_chars, config.language)


def reaction(
    name: str, ts: str, *, user: str, added: bool = True, item_user: str = BOT_USER
) -> dict[str, Any]:
    return {
        "type": "reaction_added" if added else "reaction_removed",
        "user": user,
        "reaction": name,
        "item_user": item_user,
        "item": {"type": "message", "channel": "C0GENERAL", "ts": ts},
        "event_ts": f"{time.time():.6f}",
    }
