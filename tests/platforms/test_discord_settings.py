"""Discord settings (SOLARBOT_DISCORD_*) and the service wiring that starts the adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.discord import DiscordAdapter
from bot.errors import ConfigError, SolarbotError
from bot.service import Service, build_engine, platform_adapters
from bot.settings import load_settings
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord


def test_discord_is_off_without_a_token_and_dms_are_opt_in() -> None:
    settings = load_settings(environ={})
    assert settings.discord_token is None and settings.discord_dms is False
    assert settings.discord_allowed_guilds == frozenset()
    assert not any(isinstance(a, DiscordAdapter) for a in platform_adapters(settings))


def test_id_lists_parse_from_comma_separated_env_values() -> None:
    settings = load_settings(
        environ={
            "SOLARBOT_DISCORD_TOKEN": "abc.def.ghi",
            "SOLARBOT_DISCORD_ALLOWED_GUILDS": "111111111111111111, 222222222222222222",
            "SOLARBOT_DISCORD_ALLOWED_CHANNELS": "333333333333333333",
            "SOLARBOT_DISCORD_ALLOWED_ROLES": "",
            "SOLARBOT_DISCORD_ADMIN_ROLES": " 444444444444444444 ,",
            "SOLARBOT_DISCORD_DMS": "true",
        }
    )
    assert settings.discord_allowed_guilds == {111111111111111111, 222222222222222222}
    assert settings.discord_allowed_channels == {333333333333333333}
    assert settings.discord_allowed_roles == frozenset()
    assert settings.discord_admin_roles == {444444444444444444}
    assert settings.discord_dms is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SOLARBOT_DISCORD_ALLOWED_GUILDS", "123,abc"),
        ("SOLARBOT_DISCORD_ALLOWED_CHANNELS", "-5"),
        ("SOLARBOT_DISCORD_ALLOWED_ROLES", "1.5"),
        ("SOLARBOT_DISCORD_ADMIN_ROLES", "99999999999999999999999"),
        ("SOLARBOT_DISCORD_TOKEN", "   "),
        ("SOLARBOT_DISCORD_TOKEN", "Bot abc.def"),
        ("SOLARBOT_DISCORD_DMS", "sometimes"),
        ("SOLARBOT_DISCORD_COMMAND_GUILD", "my-server"),
        ("SOLARBOT_DISCORD_COMMAND_GUILD", "0"),
        ("SOLARBOT_DISCORD_COMMAND_GUILD", "99999999999999999999999"),
    ],
)
def test_a_bad_discord_value_fails_with_one_line_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={key: value})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "\n" not in message
    assert "abc.def" not in message


def test_the_token_is_secret() -> None:
    settings = load_settings(environ={"SOLARBOT_DISCORD_TOKEN": "very.secret.token"})
    assert "very.secret.token" not in repr(settings) and "very.secret.token" not in str(settings)
    (adapter,) = [a for a in platform_adapters(settings) if isinstance(a, DiscordAdapter)]
    assert "very.secret.token" not in repr(adapter)
    assert adapter.options.ingress is True
    (rest_only,) = platform_adapters(settings, ingress=False)
    assert isinstance(rest_only, DiscordAdapter) and rest_only.options.ingress is False


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_guild(10, "home")
    fake.add_channel(10, 100, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    yield fake
    await fake.close()


@pytest.fixture
async def service(fake: FakeDiscord, tmp_path: Path) -> AsyncIterator[Service]:
    """What `solarbot run` builds with SOLARBOT_DISCORD_TOKEN set (the fake engine)."""
    settings = load_settings(
        environ={
            "SOLARBOT_DISCORD_TOKEN": fake.token,
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.05",
        }
    )
    repository = Repository.open(settings.resolved_database_url())
    yield Service(
        settings=settings,
        repository=repository,
        engine=build_engine(settings),
        adapters=platform_adapters(settings),
        drain_seconds=2,
    )
    repository.close()


async def started(service: Service, fake: FakeDiscord) -> None:
    await fake.ready.wait()
    while service.worker is None:
        await asyncio.sleep(0.01)


async def test_the_service_runs_the_discord_adapter_beside_the_worker(
    fake: FakeDiscord, service: Service
) -> None:
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(20):
            await started(service, fake)
            await asyncio.sleep(0.1)
            await fake.user_message(100, f"<@{BOT_ID}> are you there?", mentions=(BOT_ID,))
            while not [m for m in fake.bot_messages(100) if "are you there" in m["content"]]:
                await asyncio.sleep(0.02)
    finally:
        service.stopping.set()
        await running
    assert fake.connections == 0  # the adapter closed its gateway connection on shutdown


async def test_a_gateway_refused_for_good_after_start_up_stops_the_service(
    fake: FakeDiscord, service: Service
) -> None:
    """The Message Content switch is turned off while the bot runs: on its next reconnect Discord
    refuses it (4014). A deaf bot must not keep running: the service stops, cleanly, with an
    error naming the switch (the CLI exits 2, a supervisor restarts it)."""
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(30):
            await started(service, fake)
            fake.message_content_enabled = False
            await fake.drop_gateway_connections()
            with pytest.raises(SolarbotError, match="MESSAGE CONTENT"):
                await running
    finally:
        if not running.done():
            service.stopping.set()
            await running
    assert fake.connections == 0


@pytest.mark.parametrize("engine", ["fake", "local", "static"])
async def test_status_names_the_model_the_engine_serves(
    engine: str, fake: FakeDiscord, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`!status` shows the engine's model (its ``model_id``), not the engine's kind (it showed
    "static" for the static engine)."""
    settings = load_settings(
        environ={
            "SOLARBOT_DISCORD_TOKEN": fake.token,
            "SOLARBOT_ENGINE": engine,
            "SOLARBOT_MODEL": str(tiny_model_dir),
            "SOLARBOT_DEVICE": "cpu",
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_POLL_SECONDS": "0.05",
        }
    )
    built = build_engine(settings)
    expected = "fake" if engine == "fake" else str(tiny_model_dir)
    assert built.model_id == expected
    repository = Repository.open(settings.resolved_database_url())
    service = Service(
        settings=settings,
        repository=repository,
        engine=built,
        adapters=platform_adapters(settings, model_id=built.model_id),
        drain_seconds=2,
    )
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(60):
            await started(service, fake)
            await fake.user_message(100, f"<@{BOT_ID}> !status", mentions=(BOT_ID,))
            while not (replies := [m["content"] for m in fake.bot_messages(100)]):
                await asyncio.sleep(0.02)
        assert f"**Model:** {expected}\n" in replies[0]
    finally:
        service.stopping.set()
        await running
        repository.close()
