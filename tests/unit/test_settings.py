from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import ConfigError, ContextWindowError
from bot.generation.solar import DEFAULT_MODEL_ID
from bot.settings import load_settings


def test_defaults_are_the_embedded_setup(tmp_path: Path) -> None:
    settings = load_settings(environ={"SOLARBOT_DATA_DIR": str(tmp_path)})
    assert settings.model == DEFAULT_MODEL_ID
    assert settings.dtype == "auto" and settings.engine == "local"
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path.resolve() / 'solarbot.db'}"
    assert settings.context_window is None  # taken from the model's config


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SOLARBOT_MAX_NEW_TOKENS", "0"),
        ("SOLARBOT_MAX_NEW_TOKENS", "many"),
        ("SOLARBOT_DTYPE", "int3"),
        ("SOLARBOT_DEVICE", "tpu"),
        ("SOLARBOT_TEMPERATURE", "-1"),
        ("SOLARBOT_TOP_P", "0"),
        ("SOLARBOT_WORKER_CONCURRENCY", "-1"),
        ("SOLARBOT_LEASE_SECONDS", "0.1"),
        ("SOLARBOT_CONTEXT_WINDOW", "-5"),
        ("SOLARBOT_ENGINE", "gpt"),
        ("SOLARBOT_MODEL", ""),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={key: value})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "\n" not in message


def test_an_unknown_solarbot_key_is_a_typo_not_silence() -> None:
    with pytest.raises(ConfigError, match="SOLARBOT_MAX_TOKENS: unknown setting"):
        load_settings(environ={"SOLARBOT_MAX_TOKENS": "10"})
    load_settings(environ={"SOLARBOT_TEST_ANYTHING": "1"})  # the test suite's own variables


def test_env_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SOLARBOT_MAX_NEW_TOKENS=77\nSOLARBOT_SYSTEM_PROMPT=from file\n")
    monkeypatch.setenv("SOLARBOT_SYSTEM_PROMPT", "from env")
    settings = load_settings(env_file=env_file)
    assert settings.max_new_tokens == 77 and settings.system_prompt == "from env"


def test_the_database_password_is_not_in_the_settings_repr() -> None:
    url = "postgresql://bot:hunter2@db.internal/solarbot"
    settings = load_settings(environ={"SOLARBOT_DATABASE_URL": url})
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert settings.resolved_database_url() == url


def test_an_invalid_database_url_names_the_key(tmp_path: Path) -> None:
    from storage.repository import Repository

    with pytest.raises(ConfigError, match="SOLARBOT_DATABASE_URL"):
        Repository.open("not a url")
    with pytest.raises(ConfigError, match="SOLARBOT_DATABASE_URL: unsupported database 'mysql'"):
        Repository.open("mysql://root@localhost/x")


@given(window=st.integers(1, 20_000), reply=st.integers(1, 8192))
def test_a_context_window_must_leave_room_for_a_reply(window: int, reply: int) -> None:
    environ = {"SOLARBOT_CONTEXT_WINDOW": str(window), "SOLARBOT_MAX_NEW_TOKENS": str(reply)}
    if window > reply:
        settings = load_settings(environ=environ)
        assert (settings.context_window, settings.max_new_tokens) == (window, reply)
        return
    with pytest.raises(ContextWindowError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"SOLARBOT_CONTEXT_WINDOW={window} not larger than ")
    assert f"SOLARBOT_MAX_NEW_TOKENS={reply}" in message


def test_engine_names_are_listed_in_one_place(capsys: pytest.CaptureFixture[str]) -> None:
    from typing import get_args

    from bot.cli import build_parser
    from bot.settings import ENGINE_DESCRIPTIONS, ENGINE_NAMES, Settings

    assert set(ENGINE_DESCRIPTIONS) == set(ENGINE_NAMES)
    assert get_args(Settings.model_fields["engine"].annotation) == ENGINE_NAMES
    for command in ("run", "chat", "worker"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        for name in ENGINE_NAMES:
            assert f"'{name}' ({ENGINE_DESCRIPTIONS[name]})" in shown
