"""Every platform adapter is built the same way: ``<Name>Adapter(options)`` from a frozen,
keyword-only options dataclass whose credentials never show in a repr, and ``bot.service`` builds
those options from the settings (the model name shown by ``status`` from one place)."""

from __future__ import annotations

import dataclasses
import inspect
import io
from typing import Any

import pytest

from adapters.console import ConsoleAdapter, ConsoleOptions
from adapters.discord import DiscordAdapter, DiscordOptions
from adapters.slack import SlackAdapter, SlackOptions
from adapters.webhook import WebhookAdapter, WebhookOptions
from bot.delivery import ChatAdapter, DeliveryError, HandoffNotifier, ReportsConnection
from bot.service import platform_adapters, served_model
from bot.settings import load_settings
from bot.worker import delivery_error_kind

SECRET = "s3cr3t-Zq9"
ADAPTERS: list[tuple[type[Any], type[Any], dict[str, Any]]] = [
    (DiscordAdapter, DiscordOptions, {"token": SECRET}),
    (
        SlackAdapter,
        SlackOptions,
        {"bot_token": SECRET, "signing_secret": SECRET + "x", "app_token": SECRET + "y"},
    ),
    (
        WebhookAdapter,
        WebhookOptions,
        {"url": f"https://example.invalid/{SECRET}", "secret": SECRET},
    ),
    (
        ConsoleAdapter,
        ConsoleOptions,
        {"input_stream": io.StringIO(""), "output_stream": io.StringIO()},
    ),
]
ENVIRON = {
    "SOLARBOT_DISCORD_TOKEN": SECRET,
    "SOLARBOT_SLACK_BOT_TOKEN": "xoxb-" + SECRET,
    "SOLARBOT_SLACK_SIGNING_SECRET": SECRET,
    "SOLARBOT_WEBHOOK_URL": f"https://hooks.invalid/{SECRET}",
    "SOLARBOT_WEBHOOK_SECRET": SECRET,
}


@pytest.mark.parametrize(("adapter", "options", "values"), ADAPTERS)
def test_each_adapter_takes_one_frozen_keyword_only_options_object(
    adapter: type[Any], options: type[Any], values: dict[str, Any]
) -> None:
    parameters = list(inspect.signature(adapter.__init__).parameters.values())[1:]
    assert [p.name for p in parameters] == ["options"]
    assert dataclasses.is_dataclass(options)
    assert options.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert all(field.kw_only for field in dataclasses.fields(options))
    built = options(**values)
    first = dataclasses.fields(built)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, first, getattr(built, first))
    instance: Any = adapter(built)
    assert instance.options is built
    assert isinstance(instance, ChatAdapter)
    # Credentials never show, neither in the options nor in the adapter.
    assert SECRET not in repr(built) and SECRET not in repr(instance)


async def test_the_service_builds_every_configured_adapter_from_the_settings() -> None:
    settings = load_settings(environ={**ENVIRON, "SOLARBOT_DISCORD_ALLOWED_ROLES": "12,34"})
    built: list[Any] = list(platform_adapters(settings))
    assert [type(a) for a in built] == [DiscordAdapter, SlackAdapter, WebhookAdapter]
    discord, slack, webhook = built
    assert discord.options.allowed_roles == frozenset({12, 34})
    assert slack.options.mode == "http" and slack.options.ingress
    assert webhook.options.ingress
    # What the optional capabilities say about each platform.
    assert [isinstance(a, HandoffNotifier) for a in built] == [True, True, False]
    assert [isinstance(a, ReportsConnection) for a in built] == [True, False, False]
    for adapter in built:
        assert SECRET not in repr(adapter) and SECRET not in repr(adapter.options)
    delivery_only: list[Any] = list(platform_adapters(settings, ingress=False))
    assert [a.options.ingress for a in delivery_only] == [False, False, False]


@pytest.mark.parametrize(
    ("environ", "shown"),
    [
        ({}, "upstage/SOLAR-10.7B-Instruct-v1.0"),
        ({"SOLARBOT_ENGINE": "static"}, "upstage/SOLAR-10.7B-Instruct-v1.0"),
        ({"SOLARBOT_ENGINE": "local", "SOLARBOT_MODEL": "/models/solar-q"}, "/models/solar-q"),
        (
            {"SOLARBOT_ENGINE": "openai", "SOLARBOT_OPENAI_BASE_URL": "http://gpu:8000/v1"},
            "upstage/SOLAR-10.7B-Instruct-v1.0",
        ),
        (
            {
                "SOLARBOT_ENGINE": "openai",
                "SOLARBOT_OPENAI_BASE_URL": "http://gpu:8000/v1",
                "SOLARBOT_OPENAI_MODEL": "solar",
            },
            "solar",
        ),
        ({"SOLARBOT_ENGINE": "fake"}, "fake"),
    ],
)
def test_status_shows_the_served_model_on_every_platform(
    environ: dict[str, str], shown: str
) -> None:
    settings = load_settings(environ={**ENVIRON, **environ})
    assert served_model(settings) == shown
    built: list[Any] = list(platform_adapters(settings))
    assert [a.options.model_id for a in built[:2]] == [shown, shown]  # Discord, Slack


def test_a_delivery_errors_kind_labels_the_metric_and_defaults_from_retry_after() -> None:
    assert delivery_error_kind(DeliveryError("down")) == "failed"
    assert delivery_error_kind(DeliveryError("slow down", retry_after=2.0)) == "rate_limited"
    assert delivery_error_kind(DeliveryError("gone", kind="not_in_channel")) == "not_in_channel"
    assert delivery_error_kind(DeliveryError("x", retry_after=1.0, kind="timeout")) == "timeout"
