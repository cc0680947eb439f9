"""The `solarbot` command as a user runs it: a real subprocess, real stdin/stdout, a real SQLite file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.cli import build_parser
from bot.records import ConversationKey, JobStatus
from storage import database
from storage.repository import Repository
from tests.support.processes import ROOT, clean_env, solarbot


def test_help_explains_every_command() -> None:
    result = solarbot("--help", env={})
    assert result.returncode == 0
    for command in ("run", "chat", "worker", "db", "upscale"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("key", "value"),
    [("SOLARBOT_MAX_NEW_TOKENS", "lots"), ("SOLARBOT_DTYPE", "fp8"), ("SOLARBOT_MAX_TOKENS", "5")],
)
def test_bad_settings_fail_fast_with_one_line_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    result = solarbot(
        "chat", "--engine", "fake", env={"SOLARBOT_DATA_DIR": str(tmp_path), key: value}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"solarbot: error: {key}:")
    assert not (tmp_path / "solarbot.db").exists()  # failed before touching anything


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = solarbot("db", "upgrade", env={"SOLARBOT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert f"revision {database.head_revision()}" in result.stdout
    assert (tmp_path / "solarbot.db").exists()


def test_db_errors_never_show_the_password(tmp_path: Path) -> None:
    url = "postgresql://bot:s3cret-pw@127.0.0.1:1/solarbot"  # nothing listens on port 1
    result = solarbot("db", "upgrade", env={"SOLARBOT_DATABASE_URL": url}, timeout=60)
    assert result.returncode == 2
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("solarbot: error:")


def test_chat_through_the_whole_service_with_the_fake_engine(tmp_path: Path) -> None:
    env = {"SOLARBOT_DATA_DIR": str(tmp_path)}
    result = solarbot("chat", "--engine", "fake", env=env, stdin="hi\n/channel ops\nhello ops\n")
    assert result.returncode == 0, result.stderr
    assert "solarbot [#general]: You said: hi\n" in result.stdout
    assert "solarbot [#ops]: You said: hello ops\n" in result.stdout
    repository = Repository.open(f"sqlite:///{tmp_path.resolve() / 'solarbot.db'}")
    key = ConversationKey(platform="console", channel="general")
    assert [m.text for m in repository.messages(key)] == ["hi", "You said: hi"]
    repository.close()


def test_run_without_platform_tokens_is_the_console(tmp_path: Path) -> None:
    result = solarbot(
        "run", "--engine", "fake", env={"SOLARBOT_DATA_DIR": str(tmp_path)}, stdin="yo\n"
    )
    assert result.returncode == 0, result.stderr
    assert "solarbot [#general]: You said: yo" in result.stdout
    # A chat in the terminal: no INFO lines between the questions and the answers.
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--verbose",), {}), ((), {"SOLARBOT_LOG_LEVEL": "INFO"})],
    ids=["--verbose", "SOLARBOT_LOG_LEVEL"],
)
def test_the_console_logs_info_when_asked(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    environ = {"SOLARBOT_DATA_DIR": str(tmp_path), **env}
    result = solarbot("run", "--engine", "fake", *args, env=environ, stdin="yo\n")
    assert result.returncode == 0, result.stderr
    assert "solarbot [#general]: You said: yo" in result.stdout
    assert " INFO bot.worker: job 1 done (attempt 1)" in result.stderr


def test_the_static_engine_can_be_chosen_on_the_command_line() -> None:
    args = build_parser().parse_args(["run", "--engine", "static"])
    assert args.engine == "static"


def test_worker_without_a_platform_explains_itself(tmp_path: Path) -> None:
    result = solarbot("worker", "--engine", "fake", env={"SOLARBOT_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no platform is configured" in result.stderr


def test_a_missing_model_names_the_setting(tmp_path: Path) -> None:
    env = {
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_MODEL": str(tmp_path / "no-such-model"),
        "SOLARBOT_DEVICE": "cpu",
    }
    result = solarbot("chat", env=env, stdin="hi\n")
    assert result.returncode == 2
    assert "SOLARBOT_MODEL" in result.stderr
    assert "--engine fake" in result.stderr  # and how to try it without a model


def test_sigterm_drains_the_running_reply_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = clean_env(
        {
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_ENGINE": "fake",
            "SOLARBOT_FAKE_DELAY_SECONDS": "0.05",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stdin is not None
    words = " ".join(f"w{n}" for n in range(40))  # the echo takes ~2 s to stream
    process.stdin.write(words + "\n")
    process.stdin.flush()  # stdin stays open: only the signal ends this chat
    url = f"sqlite:///{tmp_path.resolve() / 'solarbot.db'}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / "solarbot.db").exists():
            repository = Repository.open(url, migrate=False)
            try:
                if repository.count_jobs(statuses=[JobStatus.RUNNING]) == 1:
                    break
            except Exception:
                pass  # the schema is still being created
            finally:
                repository.close()
        time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError("the job never started running")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout == f"solarbot [#general]: You said: {words}\n"  # drained, not cut off
    repository = Repository.open(url)
    assert [job.status for job in repository.jobs()] == [JobStatus.DONE]
    repository.close()


def test_a_context_window_without_room_for_a_reply_ends_start_up_with_one_line(
    tmp_path: Path,
) -> None:
    env = {
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_CONTEXT_WINDOW": "512",
        "SOLARBOT_MAX_NEW_TOKENS": "512",
    }
    result = solarbot("chat", "--engine", "fake", env=env, stdin="hi\n")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("solarbot: error: SOLARBOT_CONTEXT_WINDOW=512 not larger than ")
    assert "SOLARBOT_MAX_NEW_TOKENS=512" in lines[0]
    assert not (tmp_path / "solarbot.db").exists()  # failed before touching anything


@pytest.mark.parametrize("engine", ["local", "static"])
def test_a_model_with_too_few_positions_ends_start_up_with_one_line(
    tmp_path: Path, few_positions_model: Path, engine: str
) -> None:
    """The model's config allows 256 positions; replies may be 512 tokens: one line naming the
    settings, before the weights are read (the folder has none)."""
    env = {
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_MODEL": str(few_positions_model),
        "SOLARBOT_DEVICE": "cpu",
        "SOLARBOT_MAX_NEW_TOKENS": "512",
    }
    result = solarbot("chat", "--engine", engine, env=env, stdin="hi\n", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "allows only 256 positions" in lines[0]
    assert "SOLARBOT_MAX_NEW_TOKENS=512" in lines[0] and "SOLARBOT_CONTEXT_WINDOW" in lines[0]
