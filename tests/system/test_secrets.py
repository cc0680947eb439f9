"""Secrets never leak: the service runs end to end (a real ``solarbot worker`` process, DEBUG logs,
platform failures) with tokens, signing secret, webhook secret and a database password set, and
none of them appears in its logs, its error messages or the database file; what people wrote
stays out of database errors too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from bot.intake import Intake
from bot.records import Incoming, JobStatus
from storage.repository import Repository
from tests.support.db_faults import REFUSAL, refusing_inserts
from tests.support.webhook_platform import WebhookPlatform
from tests.system.test_cli import solarbot
from tests.system.test_crash import start_worker, worker_env

WEBHOOK_SECRET = "whsec-Zq8Lr2NpT5vX0"
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.s3cretDiscordTokenValue0123456789"
SLACK_TOKEN = "xoxb-1111-2222-s3cretSlackBotToken"
SLACK_SIGNING = "8f742231b10e8888abcd99yyyzzz85a5"
DB_PASSWORD = "pg-pw-Kx81hQ"
SECRETS = (WEBHOOK_SECRET, DISCORD_TOKEN, SLACK_TOKEN, SLACK_SIGNING, DB_PASSWORD)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked: {secret[:6]}..."


async def test_the_worker_never_logs_the_webhook_secret(tmp_path: Path) -> None:
    platform = WebhookPlatform(secret=WEBHOOK_SECRET)
    url = await platform.start()
    db = tmp_path / "solarbot.db"
    repository = Repository.open(f"sqlite:///{db}")
    intake = Intake(repository)
    for n in range(3):
        await intake.submit(
            Incoming(
                platform="webhook", channel="c", author_id="u", text=f"q{n}", message_id=str(n)
            )
        )
    env = worker_env(
        f"sqlite:///{db}",
        url,
        SOLARBOT_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SOLARBOT_LOG_LEVEL="DEBUG",
        SOLARBOT_FAKE_DELAY_SECONDS="0",
    )
    log = tmp_path / "worker.log"
    platform.apply_then_fail_next = 2  # errors get logged, with whatever they carry
    worker = start_worker(env, log)
    try:
        async with asyncio.timeout(60):
            while await asyncio.to_thread(repository.count_jobs) > 0:
                await asyncio.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        await platform.stop()
    assert all(job.status is JobStatus.DONE for job in repository.jobs())
    repository.close()
    # Every request carried the secret (the platform refuses any without it).
    assert platform.requests > 0 and platform.unauthorised == 0
    output = log.read_text()
    assert "webhook HTTP 500" in output and "DEBUG" in output
    assert_no_secret(output)
    assert_no_secret(db.read_bytes().decode("utf-8", "replace"))


def test_platform_tokens_and_the_db_password_stay_out_of_errors(tmp_path: Path) -> None:
    """Discord and Slack unreachable (nothing listens), PostgreSQL refusing: every failure is
    reported, and no token, signing secret or password is in what is printed."""
    outputs = []
    for env in (
        {"SOLARBOT_DISCORD_TOKEN": DISCORD_TOKEN},
        {
            "SOLARBOT_SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SOLARBOT_SLACK_SIGNING_SECRET": SLACK_SIGNING,
            "SOLARBOT_SLACK_API_URL": "http://127.0.0.1:1/api/",
            "SOLARBOT_SLACK_PORT": "0",
        },
    ):
        env = {**env, "SOLARBOT_DATA_DIR": str(tmp_path), "SOLARBOT_LOG_LEVEL": "DEBUG"}
        result = solarbot("run", "--engine", "fake", env=env, stdin="hello\n", timeout=120)
        outputs.append(result.stdout + result.stderr)
    bad_db = solarbot(
        "worker",
        "--engine",
        "fake",
        env={
            "SOLARBOT_DATABASE_URL": f"postgresql://bot:{DB_PASSWORD}@127.0.0.1:1/solarbot",
            "SOLARBOT_WEBHOOK_URL": "http://127.0.0.1:1",
            "SOLARBOT_LOG_LEVEL": "DEBUG",
        },
        timeout=120,
    )
    assert bad_db.returncode != 0
    outputs.append(bad_db.stdout + bad_db.stderr)
    for output in outputs:
        assert output.strip()  # something was said about the failure
        assert_no_secret(output)


def test_a_refused_write_keeps_what_people_wrote_out_of_the_error(
    repository: Repository,
) -> None:
    """Database errors end up in logs: the statement may be there, its values (people's messages
    and names) not."""
    incoming = Incoming(
        platform="slack",
        workspace="T0TEAM",
        channel="C0HELP",
        author_id="U0PAT",
        author_name="Patricia Quartermain",
        text="my account number is 4711-0815, why was I charged twice?",
        message_id="1690000000.000001",
    )
    with refusing_inserts(repository, "messages"), pytest.raises(DBAPIError) as caught:
        repository.enqueue(incoming)
    error = str(caught.value)
    assert REFUSAL in error and "INSERT INTO messages" in error  # still diagnosable
    assert "4711-0815" not in error and "Quartermain" not in error
    assert repository.jobs() == []  # the transaction was rolled back: nothing half-stored
    assert repository.enqueue(incoming) is not None  # and it works again once the database does
