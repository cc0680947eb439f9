"""Secrets that are no setting stay out of the logs: a Discord interaction's token (in its webhook
and callback URLs and in the INTERACTION_CREATE payload discord.py logs at DEBUG) and a Slack
slash command's ``response_url`` (in the request body bolt reads and the URL slack_sdk posts to).

The service's logging is set up as ``solarbot run`` does (``bot.logs.configure`` with the level,
format and secrets of ``Settings`` loaded with ``SOLARBOT_LOG_LEVEL=DEBUG``), in both formats; a
Discord ``/ask`` (public and private) and a Slack ``/solar`` question (public and private) run
through the real discord.py and slack-bolt/slack_sdk against the local fakes; the whole captured
output must not hold any token or response_url secret, and does hold the masked lines (so the
test sees the lines that would have leaked)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot import logs
from bot.settings import load_settings
from tests.support.discord_fake import APP_ID, FakeDiscord
from tests.support.discord_rig import GENERAL, home_discord, start_rig
from tests.support.slack_fake import TEAM, FakeSlack
from tests.support.slack_rig import start_rig as start_slack_rig

SLACK_SECRETS = ("Zq8LrNpT5vX0publicHookSecret", "Kx81hQprivateHookSecret77")


@pytest.fixture(params=["text", "json"])
def debug_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[io.StringIO]:
    """The root logger as ``solarbot run`` configures it with SOLARBOT_LOG_LEVEL=DEBUG (and the
    format of the parameter), writing into a buffer; the test's logging is restored after."""
    settings = load_settings(
        environ={
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_LOG_LEVEL": "DEBUG",
            "SOLARBOT_LOG_FORMAT": request.param,
        }
    )
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    buffer = io.StringIO()
    logs.configure(
        level=settings.log_level,
        fmt=settings.log_format,
        secrets=settings.secret_values(),
        stream=buffer,
    )
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        for name, old in noisy.items():
            logging.getLogger(name).setLevel(old)


@pytest.fixture
async def discord_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch, elsewhere=False) as fake:
        yield fake


async def test_discord_interaction_tokens_never_reach_the_logs(
    debug_log: io.StringIO, discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(discord_fake, sqlite_url)
    try:
        public = await discord_fake.slash(GENERAL, "ask", question="what is up?")
        private = await discord_fake.slash(GENERAL, "ask", question="psst", private=True)
        await rig.until(lambda: rig.jobs_done(2))
        await discord_fake.slash(GENERAL, "solar", "status")
        await rig.until(lambda: len(discord_fake.rest("PATCH", r"^/webhooks/")) >= 3)
    finally:
        await rig.stop()
        rig.repository.close()
    output = debug_log.getvalue()
    tokens = [public["token"], private["token"]] + [
        interaction.token for interaction in discord_fake.interactions.values()
    ]
    assert all(discord_fake.interactions[int(p["id"])].original for p in (public, private))
    for token in tokens:
        assert token not in output
    # The lines that carried them are there, masked: the DEBUG request lines and the payloads.
    assert f"/webhooks/{APP_ID}/***" in output
    assert "/callback" in output and "/interactions/" in output
    assert "token" in output and "***" in output
    assert "WebSocket Event" in output  # discord.py's gateway payloads were logged


async def test_slack_response_urls_never_reach_the_logs(
    debug_log: io.StringIO, tmp_path: Path
) -> None:
    fake = FakeSlack()
    await fake.start()
    try:
        async with start_slack_rig(tmp_path, fake) as rig:
            public, private = SLACK_SECRETS
            status, _, _ = await rig.command("how do I restart it?", name=public)
            assert status == 200
            status, _, _ = await rig.command("--private and my quota?", name=private)
            assert status == 200
            await rig.until(lambda: rig.jobs_done(2))
            await rig.until(lambda: any(r["_name"] == private for r in fake.responses))
    finally:
        await fake.stop()
    output = debug_log.getvalue()
    for secret in SLACK_SECRETS:
        assert secret not in output
    # slack_sdk's DEBUG line of the private answer's request was there, masked.
    assert f"url: {fake.base}/commands/{TEAM}/1234567890/***" in output
