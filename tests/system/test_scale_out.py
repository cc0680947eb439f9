"""Scale-out on the real PostgreSQL server: two `solarbot worker` processes and one intake process
share the database; 500 messages over 50 channels are answered once each, in order per channel,
by both workers, and delivered over HTTP to a loopback platform (``tests/support/webhook_platform.py``).
Also: `solarbot run --role adapters` runs without a model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.records import JobStatus
from storage.repository import Repository
from tests.support.webhook_platform import WebhookPlatform

ROOT = Path(__file__).parents[2]
CHANNELS = 50
PER_CHANNEL = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(db_url: str, platform_url: str, metrics_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATABASE_URL": db_url,
            "SOLARBOT_WEBHOOK_URL": platform_url,
            "SOLARBOT_METRICS_PORT": str(metrics_port),
            "SOLARBOT_WORKER_CONCURRENCY": "8",
            "SOLARBOT_POLL_SECONDS": "0.05",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.2",
            "SOLARBOT_LOG_FORMAT": "json",
            "SOLARBOT_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


async def _wait_ready(
    http: aiohttp.ClientSession, port: int, process: asyncio.subprocess.Process
) -> dict[str, object]:
    async with asyncio.timeout(60):
        while True:
            assert process.returncode is None, "the process exited during start-up"
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        body: dict[str, object] = await response.json()
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def _done_count(http: aiohttp.ClientSession, port: int) -> float:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "solarbot_jobs_finished_total" and sample.labels == {
                "status": "done"
            }:
                return sample.value
    raise AssertionError("solarbot_jobs_finished_total{status=done} missing")


async def _stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                return await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            return -9
    return process.returncode


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_workers_and_an_intake_process_split_the_queue(
    postgres_url: str, tmp_path: Path
) -> None:
    Repository.open(postgres_url).close()  # migrate (the workers would also do it, under a lock)
    platform = WebhookPlatform()
    platform_url = await platform.start()
    ports = [_free_port(), _free_port()]
    workers: list[asyncio.subprocess.Process] = []
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    http = aiohttp.ClientSession()
    try:
        for port, log in zip(ports, logs, strict=True):
            with log.open("wb") as out:
                workers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bot.cli",
                        "worker",
                        "--engine",
                        "fake",
                        cwd=ROOT,
                        env=_env(postgres_url, platform_url, port),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port, process in zip(ports, workers, strict=True):
            ready = await _wait_ready(http, port, process)
            assert ready["checks"] == {"model": "ok", "database": "ok", "adapter:webhook": "ok"}

        intake = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.scale_intake",
            postgres_url,
            str(CHANNELS),
            str(PER_CHANNEL),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(intake.communicate(), timeout=120)
        assert intake.returncode == 0, err.decode()
        sent = [json.loads(line) for line in out.decode().splitlines()]
        assert len(sent) == CHANNELS * PER_CHANNEL

        repository = Repository.open(postgres_url, migrate=False)
        try:
            async with asyncio.timeout(180):
                while await asyncio.to_thread(repository.count_jobs) > 0:
                    assert all(w.returncode is None for w in workers), "a worker died"
                    await asyncio.sleep(0.2)
            jobs = await asyncio.to_thread(repository.jobs)
        finally:
            repository.close()

        # Every message answered once: done at the first attempt (no job was claimed twice).
        assert len(jobs) == CHANNELS * PER_CHANNEL
        assert {job.status for job in jobs} == {JobStatus.DONE}
        assert {job.attempts for job in jobs} == {1}
        by_worker = Counter((job.worker_id or "").rsplit(":", 1)[0] for job in jobs)
        assert len(by_worker) == 2, f"work split {dict(by_worker)}"
        assert min(by_worker.values()) > 0
        print(f"work split between the two workers: {sorted(by_worker.values())}")

        # The platform saw one complete reply per message, in order in every channel.
        expected = {m["job_id"]: (m["channel"], f"You said: {m['text']}") for m in sent}
        order: dict[str, list[int]] = defaultdict(list)
        for message in sent:
            order[message["channel"]].append(message["job_id"])
        verdict = platform.check(expected, order)
        assert verdict.problems == (), verdict.problems[:5]
        assert (verdict.lost, verdict.doubled, verdict.out_of_order) == (0, 0, 0)

        # Each worker's metrics count its own share.
        async with asyncio.timeout(10):  # each worker counts a job right after recording it
            while sum(counts := [await _done_count(http, port) for port in ports]) < len(jobs):
                await asyncio.sleep(0.05)
        assert sum(counts) == CHANNELS * PER_CHANNEL
        assert sorted(counts) == sorted(by_worker.values())
    finally:
        codes = [await _stop(process) for process in workers]
        await http.close()
        await platform.stop()
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    # JSON logs: a worker's line about a job names it and its conversation.
    lines = [json.loads(line) for line in logs[0].read_text().splitlines() if line.startswith("{")]
    done = [line for line in lines if " done (attempt 1)" in line["message"]]
    assert done and all(
        "job_id" in line and line["conversation"].startswith("webhook:W1:ch") for line in done
    )


async def test_adapters_role_starts_without_loading_a_model(tmp_path: Path) -> None:
    platform = WebhookPlatform()
    platform_url = await platform.start()
    port = _free_port()
    env = _env(
        f"sqlite:///{tmp_path / 'solarbot.db'}",
        platform_url,
        port,
        SOLARBOT_MODEL=str(tmp_path / "no-such-model"),  # would fail if anything loaded it
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--role",
        "adapters",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    http = aiohttp.ClientSession()
    try:
        ready = await _wait_ready(http, port, process)
        assert ready["checks"] == {"database": "ok", "adapter:webhook": "ok"}
    finally:
        code = await _stop(process)
        await http.close()
        await platform.stop()
    assert process.stdout is not None
    output = (await process.stdout.read()).decode()
    assert code == 0, output
    assert "loading model" not in output


@pytest.mark.postgres
async def test_slack_adapters_process_and_worker_process_answer_together(
    postgres_url: str, tmp_path: Path
) -> None:
    """`solarbot run --role adapters` takes a signed Slack event in (no model); a separate
    `solarbot worker` claims it from PostgreSQL and answers through Slack's Web API
    (tests/support/slack_fake.py, the real slack-bolt / slack-sdk clients in both processes)."""
    from tests.support.slack_fake import (
        BOT_TOKEN,
        BOT_USER,
        SIGNING_SECRET,
        FakeSlack,
        event_body,
        signed_post,
    )

    Repository.open(postgres_url).close()
    slack = FakeSlack()
    await slack.start()
    slack_port, adapters_metrics, worker_metrics = _free_port(), _free_port(), _free_port()
    common = {
        "SOLARBOT_DATABASE_URL": postgres_url,
        "SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN,
        "SOLARBOT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SOLARBOT_SLACK_HOST": "127.0.0.1",
        "SOLARBOT_SLACK_PORT": str(slack_port),
        "SOLARBOT_SLACK_API_URL": slack.api_url,
        "SOLARBOT_POLL_SECONDS": "0.05",
        "SOLARBOT_METRICS_HOST": "127.0.0.1",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    log_path = tmp_path / "processes.log"
    log = log_path.open("ab")
    adapters = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--role",
        "adapters",
        cwd=ROOT,
        env={
            **base,
            **common,
            "SOLARBOT_METRICS_PORT": str(adapters_metrics),
            "SOLARBOT_MODEL": str(tmp_path / "no-such-model"),  # never loaded by this role
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "worker",
        "--engine",
        "fake",
        cwd=ROOT,
        env={**base, **common, "SOLARBOT_METRICS_PORT": str(worker_metrics)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = aiohttp.ClientSession()
    try:
        assert (await _wait_ready(http, adapters_metrics, adapters))["checks"] == {
            "database": "ok",
            "adapter:slack": "ok",
        }
        await _wait_ready(http, worker_metrics, worker)
        event = {
            "type": "app_mention",
            "user": "U0ALICE",
            "text": f"<@{BOT_USER}> across processes",
            "ts": "1690000950.000001",
            "channel": "C0GENERAL",
            "event_ts": "1690000950.000001",
        }
        status, _ = await signed_post(
            http,
            f"http://127.0.0.1:{slack_port}/slack/events",
            event_body(event),
            content_type="application/json",
        )
        assert status == 200
        thread = "1690000950.000001"
        await slack.wait_for(
            lambda: any(
                m.text.endswith("across processes") for m in slack.thread("C0GENERAL", thread)
            ),
            within=30,
        )
        [answer] = slack.thread("C0GENERAL", thread)
        assert answer.text == "You said: Alice: across processes"
        repository = Repository.open(postgres_url, migrate=False)
        try:  # the reply is posted, then recorded: wait for the record
            async with asyncio.timeout(30):
                while await asyncio.to_thread(repository.count_jobs) > 0:
                    await asyncio.sleep(0.05)
            [job] = repository.jobs()
        finally:
            repository.close()
        assert job.status is JobStatus.DONE and job.worker_id is not None
        assert f":{worker.pid}:" in job.worker_id  # answered by the worker process
    finally:
        codes = [await _stop(adapters), await _stop(worker)]
        await http.close()
        await slack.stop()
        log.close()
    assert codes == [0, 0], log_path.read_text()[-3000:]
