"""Exactly-once replies across crashes: a real ``solarbot worker`` process, killed with SIGKILL at
random (seeded, logged) moments while it generates multi-message replies, delivering over HTTP to a
loopback platform (``tests/support/webhook_platform.py``); plus the short soak (``bench/soak.py``)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.intake import Intake
from bot.records import Incoming, JobStatus
from storage.repository import Repository
from tests.support.webhook_platform import WebhookPlatform

ROOT = Path(__file__).parents[2]
SEED = int(os.environ.get("SOLARBOT_TEST_CRASH_SEED", "20261128"))


def worker_env(db_url: str, platform_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATABASE_URL": db_url,
            "SOLARBOT_WEBHOOK_URL": platform_url,
            "SOLARBOT_WEBHOOK_MESSAGE_LIMIT": "100",  # every reply takes 3 messages
            "SOLARBOT_WEBHOOK_TIMEOUT_SECONDS": "2",
            "SOLARBOT_FAKE_DELAY_SECONDS": "0.05",  # ~0.9 s per reply: kills land mid-reply
            "SOLARBOT_LEASE_SECONDS": "1",
            "SOLARBOT_WORKER_CONCURRENCY": "4",
            "SOLARBOT_MAX_ATTEMPTS": "50",
            "SOLARBOT_RETRY_BASE_SECONDS": "0.05",
            "SOLARBOT_RETRY_MAX_SECONDS": "0.3",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.05",
            "SOLARBOT_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "worker", "--engine", "fake"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_sigkill_mid_reply_never_loses_or_doubles_a_reply(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db_url = f"sqlite:///{tmp_path / 'solarbot.db'}"
    repository = Repository.open(db_url)
    intake = Intake(repository)
    platform = WebhookPlatform()
    url = await platform.start()
    log = tmp_path / "worker.log"
    env = worker_env(db_url, url)
    expected: dict[int, tuple[str, str]] = {}
    order: dict[str, list[int]] = {}
    for index in range(9):
        channel = f"c{index % 3}"
        words = " ".join(f"w{index}-{n}-Grüße-東京" for n in range(16))
        result = await intake.submit(
            Incoming(
                platform="webhook",
                channel=channel,
                author_id="u",
                text=words,
                message_id=str(index),
            )
        )
        assert result is not None and result.created
        expected[result.job_id] = (channel, f"You said: {words}")
        order.setdefault(channel, []).append(result.job_id)

    timeline: list[str] = [f"seed {SEED}"]
    started = time.monotonic()
    worker = start_worker(env, log)
    try:
        kills = 0
        while kills < 3 and await asyncio.to_thread(repository.count_jobs) > 0:
            # Wait for this process to hold a job, then kill it at a random point of the reply.
            mine = f":{worker.pid}:"
            async with asyncio.timeout(60):
                while not any(
                    mine in (job.worker_id or "")
                    for job in await asyncio.to_thread(repository.jobs, status=JobStatus.RUNNING)
                ):
                    await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.05, 1.2))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
            running = [j.id for j in repository.jobs(status=JobStatus.RUNNING)]
            timeline.append(
                f"{time.monotonic() - started:6.2f}s SIGKILL #{kills}; running jobs {running}"
            )
            worker = start_worker(env, log)
        async with asyncio.timeout(90):
            while await asyncio.to_thread(repository.count_jobs) > 0:
                await asyncio.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        await platform.stop()
    print("\n".join(timeline))

    verdict = platform.check(expected, order)
    assert verdict.problems == (), verdict.problems
    jobs = repository.jobs()
    assert all(job.status is JobStatus.DONE for job in jobs)
    # The kills did land mid-reply: some jobs needed another attempt, and those continued the
    # messages the killed attempt had posted (edited them) rather than posting new ones.
    retried = [job for job in jobs if job.attempts > 1]
    assert retried, f"no kill landed mid-reply: {timeline}"
    replies = platform.replies()
    for job in jobs:
        assert job.reply_message_ids == tuple(m.id for m in replies[job.id])
    assert any(len(m.history) > 1 for job in retried for m in replies[job.id])
    assert kills >= 2
    repository.close()
    print(f"retried jobs {len(retried)}; idempotency replays {platform.replayed_keys}")


@pytest.mark.slow
def test_short_soak_with_fault_injection_loses_and_doubles_nothing() -> None:
    """The soak of ``bench/soak.py`` at a tenth of its size: kills, platform outages (5xx, 429,
    timeouts, applied-then-500) and SQLite write-lock holds while 200 messages flow."""
    result = subprocess.run(
        [
            sys.executable,
            "bench/soak.py",
            *("--messages", "200", "--channels", "20", "--rate", "50"),
            *("--kill-every", "2.5", "--outage-every", "2", "--lock-every", "1"),
            *("--fault-tail", "3", "--drain-timeout", "90"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.fullmatch(
        r"soak: 200 messages, (\d+) faults, lost 0, doubled 0, out-of-order 0, stuck 0", last
    )
    assert match, last
    assert int(match.group(1)) >= 5, result.stdout  # faults were really injected
