"""Slack assistant threads (adapters/slack_assistant.py) end to end: signed events through the real
slack-bolt and its ``AsyncAssistant`` middleware, the real Service (intake -> SQLite -> worker), the
fake Slack's assistant.threads.* methods: thread started -> greeting and suggested prompts ->
status while queued -> "is thinking…" -> the answer streamed natively, the thread titled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.slack import rate_limited_client
from adapters.slack_assistant import STATUS_REFRESH_SECONDS, SlackAssistant, thread_title
from bot import texts
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.records import Incoming
from storage.repository import Repository
from tests.support.slack_fake import BOT_TOKEN, TEAM, FakeSlack
from tests.support.slack_rig import mention, start_rig

DM = "D0ALICE"
THREAD = "1690002000.000001"
ROOT = Path(__file__).parents[2]


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


def thread_started(thread: str = THREAD) -> dict[str, Any]:
    return {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": "U0ALICE",
            "context": {"channel_id": "C0GENERAL", "team_id": TEAM},
            "channel_id": DM,
            "thread_ts": thread,
        },
        "event_ts": "1690002000.000002",
    }


def assistant_message(text: str, *, ts: str, thread: str = THREAD) -> dict[str, Any]:
    return {
        "type": "message",
        "channel_type": "im",
        "user": "U0ALICE",
        "text": text,
        "ts": ts,
        "thread_ts": thread,
        "channel": DM,
        "event_ts": ts,
    }


async def test_a_thread_is_greeted_then_a_queued_question_shows_its_status_and_streams(
    tmp_path: Path, fake: FakeSlack
) -> None:
    busy = " ".join(f"busy{n}" for n in range(25))
    engine = FakeEngine(replies=[busy, "SOLAR is **a model**."], delay_per_chunk=0.04)
    async with start_rig(
        tmp_path,
        fake,
        engine=engine,
        environ={"SOLARBOT_WORKER_CONCURRENCY": "1"},
        streaming="native",
        status_poll_seconds=0.02,
    ) as rig:
        retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        assert await rig.event(thread_started(), event_id="EvStart") == 200
        assert await rig.event(thread_started(), event_id="EvStart", **retry) == 200
        [greeting] = fake.thread(DM, THREAD)  # once, despite Slack's retry
        assert greeting.text == texts.SLACK_ASSISTANT_GREETING
        title, prompts = fake.suggested[(DM, THREAD)]
        assert title == texts.SLACK_ASSISTANT_PROMPTS_TITLE
        assert [(p["title"], p["message"]) for p in prompts] == list(texts.SLACK_SUGGESTED_PROMPTS)

        # Someone else's long answer holds the only worker: the question waits, and says so.
        await rig.event(mention("keep busy", ts="1690002100.000001"))
        await rig.until(lambda: bool(fake.calls_to("chat.startStream")))
        question = "What is SOLAR, and who made it?"
        assert await rig.event(assistant_message(question, ts="1690002200.000001")) == 200
        queued = texts.SLACK_ASSISTANT_QUEUED.format(position=1)
        await rig.until(lambda: (DM, THREAD, queued) in fake.statuses)
        assert fake.titles[(DM, THREAD)] == question
        await rig.until(lambda: rig.jobs_done(2))

        ours = [status for channel, thread, status in fake.statuses if thread == THREAD]
        assert ours[0] == queued and ours[-1] == texts.SLACK_ASSISTANT_THINKING
        first, answer = fake.thread(DM, THREAD)
        assert first.ts == greeting.ts  # the greeting, then the one answer
        assert answer.text == "SOLAR is **a model**." and answer.stream == "stopped"
        assert answer.recipient == (TEAM, "U0ALICE")
        # The status was set before the answer started, and the answer cleared it.
        starts = [i for i, c in enumerate(fake.calls) if c.method == "chat.startStream"]
        thinking = [
            i
            for i, c in enumerate(fake.calls)
            if c.method == "assistant.threads.setStatus"
            and c.params.get("status") == texts.SLACK_ASSISTANT_THINKING
        ]
        assert thinking and thinking[-1] < starts[-1]
        assert (DM, THREAD) not in fake.status_now
        assert rig.stored(DM, THREAD) == [("user", question), ("assistant", answer.text)]


async def test_only_the_first_question_titles_the_thread_and_a_redelivery_sets_nothing(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(tmp_path, fake, streaming="native", status_poll_seconds=0.02) as rig:
        await rig.event(assistant_message("first question", ts="1690002300.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        await rig.event(assistant_message("second question", ts="1690002300.000002"))
        await rig.event(assistant_message("second question", ts="1690002300.000002"))
        await rig.until(lambda: rig.jobs_done(2))
        assert fake.titles == {(DM, THREAD): "first question"}
        assert len(fake.calls_to("assistant.threads.setTitle")) == 1
        assert len(rig.repository.jobs()) == 2
        answers = [m.text for m in fake.thread(DM, THREAD)]
        assert answers == ["You said: Alice: first question", "You said: Alice: second question"]


async def test_context_changes_are_acknowledged_and_change_nothing(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(tmp_path, fake, streaming="native") as rig:
        event = {
            "type": "assistant_thread_context_changed",
            "assistant_thread": {
                "user_id": "U0ALICE",
                "context": {"channel_id": "C0OTHER", "team_id": TEAM},
                "channel_id": DM,
                "thread_ts": THREAD,
            },
            "event_ts": "1690002400.000001",
        }
        assert await rig.event(event) == 200
        assert fake.messages == {} and rig.repository.jobs() == []


async def test_without_the_assistant_view_a_dm_thread_is_a_plain_conversation(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(tmp_path, fake, streaming="native", assistant=False) as rig:
        await rig.event(thread_started())
        await rig.event(assistant_message("plain", ts="1690002500.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        assert [m.text for m in fake.thread(DM, THREAD)] == ["You said: Alice: plain"]
        assert fake.statuses == [] and fake.titles == {} and fake.suggested == {}


def test_titles_are_one_line_and_cut_at_a_word() -> None:
    assert thread_title("  how\ndo I   start? ") == "how do I start?"
    long = "word " * 40
    title = thread_title(long)
    assert len(title) <= 80 and title.endswith("…") and not title.startswith(" ")
    assert thread_title("x" * 200) == "x" * 79 + "…"


def test_the_manifest_asks_for_the_assistant_view_its_scope_and_events() -> None:
    manifest = yaml.safe_load((ROOT / "docker/slack-manifest.yaml").read_text())
    assert "assistant_view" in manifest["features"]
    assert manifest["features"]["assistant_view"]["assistant_description"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"assistant:write", "chat:write", "im:history"} <= scopes
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= events
    assert manifest["settings"]["interactivity"]["is_enabled"] is True


async def test_the_status_follows_the_job_and_is_refreshed_before_slack_drops_it(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """The watcher alone, over the real store: queue position as it moves up, refreshed every
    minute while nothing changes, "is thinking…" once claimed, silent once the answer started."""
    repository = Repository.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    intake = Intake(repository)
    now = [0.0]
    assistant = SlackAssistant(
        client=rate_limited_client(BOT_TOKEN, base_url=fake.api_url),
        intake=lambda: intake,
        submit=_no_submit,
        allowed=lambda workspace, channel: True,
        prompts=(),
        poll_seconds=0.01,
        clock=lambda: now[0],
    )
    jobs = []
    for index in range(2):
        result = await intake.submit(
            Incoming(
                platform="slack",
                workspace=TEAM,
                channel=DM,
                thread=f"1690003000.00000{index}",
                author_id="U0ALICE",
                text=f"question {index}",
                message_id=f"1690003000.00010{index}",
            )
        )
        assert result is not None
        jobs.append(result.job_id)
    queued = texts.SLACK_ASSISTANT_QUEUED.format(position=1)
    task = asyncio.create_task(assistant._watch(jobs[1], DM, THREAD, queued))
    try:

        def statuses() -> list[str]:
            return [status for _, _, status in fake.statuses]

        await asyncio.sleep(0.1)
        assert statuses() == []  # nothing changed, nothing due
        now[0] += STATUS_REFRESH_SECONDS
        await fake.wait_for(lambda: statuses() == [queued])  # refreshed before it expires
        [first] = repository.claim(worker_id="w", limit=1, lease_seconds=60, platforms=["slack"])
        assert repository.complete(first, reply_text="a", reply_message_ids=["1.1"], token_count=1)
        # The first job is done: nobody is ahead of ours any more ("is thinking…"); claimed, it
        # stays so (nothing new to set).
        await fake.wait_for(lambda: statuses()[-1] == texts.SLACK_ASSISTANT_THINKING)
        [second] = repository.claim(worker_id="w", limit=1, lease_seconds=60, platforms=["slack"])
        assert repository.record_reply_progress(second, reply_message_ids=["2.1"])
        async with asyncio.timeout(5):
            await task  # the answer started: the watcher is done
        assert statuses() == [queued, texts.SLACK_ASSISTANT_THINKING]
    finally:
        task.cancel()
        repository.close()


async def _no_submit(event: dict[str, Any], body: dict[str, Any]) -> None:
    return None
