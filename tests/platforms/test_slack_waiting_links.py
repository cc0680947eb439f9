"""Source links for a queued Slack question when the answer is delivered by another process
(adapters/slack_waiting.py): the ingress adapter's placeholder is not taken over by a reply of its
own, so once the job is over it deletes the placeholder, leaving the other process's answer alone.
Real slack-bolt/slack_sdk against tests/support/slack_fake.py, the real intake, queue and worker
(delivering through a second, delivery-only Slack adapter), and the shipped FakeEngine."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp

from adapters.slack import SlackAdapter, SlackOptions
from bot import texts
from bot.generation.engine import SamplingParams
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.records import JobStatus
from bot.worker import Worker, WorkerOptions
from storage.repository import Repository
from tests.support import kb_corpus
from tests.support.slack_fake import (
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    event_body,
    signed_post,
)

QUESTION = "how do I install the agent on Windows?"


def mention(text: str, ts: str) -> str:
    return event_body(
        {
            "type": "app_mention",
            "user": "U0ALICE",
            "text": f"<@{BOT_USER}> {text}",
            "ts": ts,
            "channel": "C0GENERAL",
            "event_ts": ts,
        }
    )


async def test_a_placeholder_another_process_answered_past_is_deleted_when_the_job_is_over(
    sqlite_url: str,
) -> None:
    fake = FakeSlack()
    await fake.start()
    repository = Repository.open(sqlite_url)
    kb_corpus.fill(repository)
    config = repository.channel_config(platform="slack", workspace=TEAM, channel="C0GENERAL")
    repository.set_channel_config(
        platform="slack",
        workspace=TEAM,
        channel="C0GENERAL",
        config=dataclasses.replace(config, kb_collections=(kb_corpus.COLLECTION,)),
    )
    options = SlackOptions(
        bot_token=BOT_TOKEN,
        signing_secret=SIGNING_SECRET,
        host="127.0.0.1",
        port=0,
        api_url=fake.api_url,
        edit_interval=0.02,
    )
    ingress = SlackAdapter(options)
    delivery = SlackAdapter(dataclasses.replace(options, ingress=False))
    intake = Intake(repository)
    await ingress.start(intake)
    await delivery.start(intake)
    engine = FakeEngine(delay_per_chunk=0.002)
    engine._replies = [" ".join(f"word{n}" for n in range(200)), "Run the installer."]
    await engine.start()
    worker = Worker(
        repository=repository,
        engine=engine,
        adapters={"slack": delivery},  # the "other process": replies go through its own adapter
        options=WorkerOptions(
            system_prompt="You are a test bot.",
            max_new_tokens=1000,
            sampling=SamplingParams(temperature=0.0),
            poll_seconds=0.05,
            concurrency=1,
        ),
    )
    intake.on_enqueued(worker.wake)
    task = asyncio.create_task(worker.run())
    url = f"http://127.0.0.1:{ingress.http_port}/slack/events"
    try:
        async with aiohttp.ClientSession() as session:
            for text, ts in (
                ("tell me everything", "1690000000.000031"),
                (QUESTION, "1690000000.000032"),
            ):
                status, _ = await signed_post(
                    session, url, mention(text, ts), content_type="application/json"
                )
                assert status == 200

        def placeholder_gone() -> bool:
            done = repository.jobs(status=JobStatus.DONE)
            messages = fake.thread("C0GENERAL", "1690000000.000032")
            return len(done) == 2 and len(messages) == 1

        await fake.wait_for(placeholder_gone, within=15)
        [answer] = fake.thread("C0GENERAL", "1690000000.000032")
        assert answer.text.startswith("Run the installer.")
        assert "While I write" not in "".join(answer.history)
        [placeholder] = [
            m for m in fake.messages.values() if m.deleted and m.thread_ts == "1690000000.000032"
        ]
        assert placeholder.history[0].startswith(f"{texts.SLACK_THINKING}\nWhile I write")
    finally:
        await worker.stop(drain_seconds=2)
        await task
        await ingress.stop()
        await delivery.stop()
        await fake.stop()
        repository.close()
