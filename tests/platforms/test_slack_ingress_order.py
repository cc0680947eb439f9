"""Per-conversation ingress order on Slack (adapters/slack_arrivals.py), end to end: the real
slack-bolt app behind signed HTTP requests, the real Service, and tests/support/slack_fake.py,
whose file serving holds a download until the test sets an ``asyncio.Event``. A message waiting
for its files holds up only its own conversation (a thread, a DM): questions elsewhere are stored
and answered meanwhile, and the messages after it in its conversation are stored, and answered,
after it, in the order they came in; a retry of it is a no-op. No timing is asserted: the test
decides when the download ends, and waits for the adapter to have received each request (its
arrival count) before it sends the next."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.attachment_download import AttachmentOptions
from bot.records import AnswerMode, ConversationKey
from tests.support.slack_fake import APP_TOKEN, BOT_USER, TEAM, FakeSlack, event_body
from tests.support.slack_rig import Rig, ack_text, mention, start_rig

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
SLOW_FILE = b"ERROR: disk full on /var (slow file)\n"
RETRY = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(
        tmp_path,
        fake,
        attachments=AttachmentOptions(max_bytes=4096, timeout_seconds=30.0),
    ) as value:
        yield value


def with_file(rig: Rig, event: dict[str, Any], name: str, hold: asyncio.Event) -> dict[str, Any]:
    return {**event, "files": [rig.fake.add_file(name, SLOW_FILE, hold=hold)]}


def said(text: str, *, ts: str, thread_ts: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``message`` event of a channel (message.channels) without a mention."""
    event: dict[str, Any] = {
        "type": "message",
        "channel_type": "channel",
        "channel": CHANNEL,
        "user": "U0ALICE",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "team": TEAM,
        **extra,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


async def send(rig: Rig, event: dict[str, Any], **kwargs: Any) -> asyncio.Task[int]:
    """Post ``event`` without waiting for Slack's answer (it comes once the event is stored),
    once the adapter has received it: the next request comes after it."""
    received = rig.adapter._arrivals.received
    task = asyncio.create_task(rig.event(event, **kwargs))
    await rig.until(lambda: rig.adapter._arrivals.received > received or task.done())
    return task


def replies(rig: Rig, thread_ts: str | None, channel: str = CHANNEL) -> list[str]:
    """The bot's messages in a thread (None: the top level), in the order they were posted."""
    return [m.text for m in rig.fake.thread(channel, thread_ts) if not m.user]


def questions(rig: Rig, thread: str = "", channel: str = CHANNEL) -> list[str]:
    """The stored questions of a conversation, each with the names of its files."""
    key = ConversationKey(platform="slack", workspace=TEAM, channel=channel, thread=thread)
    return [
        " + ".join([m.text, *(a.name for a in m.attachments)])
        for m in rig.repository.messages(key)
        if m.role.value == "user"
    ]


def answered(rig: Rig, thread_ts: str, *words: str) -> list[str]:
    """Which of ``words`` each reply in the thread answers (the fake engine echoes the question)."""
    return [next(w for w in words if w in text) for text in replies(rig, thread_ts)]


async def test_a_held_download_in_one_thread_does_not_hold_up_other_conversations(
    rig: Rig,
) -> None:
    hold = asyncio.Event()
    slow = await send(
        rig,
        with_file(rig, mention("what does this log say?", ts="1700000001.000100"), "a.log", hold),
    )
    await rig.until(lambda: len(rig.fake.file_requests) == 1)  # the download has started
    # Another question at the top of the channel (its own thread) and one in another thread.
    assert await rig.event(mention("a quick one", ts="1700000002.000100")) == 200
    thread_b = mention("and one in thread B", ts="1700000003.000200", thread_ts="1700000003.000100")
    assert await rig.event(thread_b) == 200

    await rig.until(lambda: rig.jobs_done(2) and bool(replies(rig, "1700000003.000100")))
    assert not hold.is_set() and not slow.done()
    assert "a quick one" in replies(rig, "1700000002.000100")[0]
    assert "and one in thread B" in replies(rig, "1700000003.000100")[0]
    assert questions(rig, "1700000001.000100") == []  # not stored yet: its file is not read

    hold.set()
    assert await slow == 200
    await rig.until(lambda: rig.jobs_done(3))
    assert questions(rig, "1700000001.000100") == ["what does this log say? + a.log"]
    assert "disk full on /var" in rig.engine.prompts[-1]


async def test_in_one_thread_messages_are_stored_and_answered_in_arrival_order(rig: Rig) -> None:
    """A question with a held file starts thread T; two plain ones follow in T (and one in
    another thread, which goes first): stored and answered in the order they came in."""
    thread = "1700000010.000100"
    hold = asyncio.Event()
    first = await send(rig, with_file(rig, mention("first", ts=thread), "first.log", hold))
    await rig.until(lambda: len(rig.fake.file_requests) == 1)
    second = await send(rig, mention("second", ts="1700000010.000200", thread_ts=thread))
    third = await send(rig, mention("third", ts="1700000010.000300", thread_ts=thread))
    assert await rig.event(mention("elsewhere", ts="1700000011.000100")) == 200

    await rig.until(lambda: rig.jobs_done(1) and bool(replies(rig, "1700000011.000100")))
    assert questions(rig, thread) == [] and replies(rig, thread) == []
    assert not (first.done() or second.done() or third.done())  # Slack is answered once stored

    hold.set()
    assert [await first, await second, await third] == [200, 200, 200]
    await rig.until(lambda: rig.jobs_done(4))
    assert questions(rig, thread) == [
        "first + first.log",
        "second",
        "third",
    ]
    assert answered(rig, thread, "first", "second", "third") == ["first", "second", "third"]
    # The second was answered with the first (and its file) in its history.
    second_prompt = next(p for p in rig.engine.prompts if "second" in p and "third" not in p)
    assert "disk full on /var" in second_prompt


async def test_a_retry_and_the_twin_of_a_held_event_give_one_job_and_one_answer(
    rig: Rig,
) -> None:
    """Slack retries the event whose answer is late, and sends a mention twice (``app_mention``
    and ``message``): both wait behind the original in its thread's line, then find it stored,
    and its file is not fetched again."""
    thread = "1700000020.000100"
    hold = asyncio.Event()
    event = with_file(rig, mention("read it", ts=thread), "once.log", hold)
    original = await send(rig, event, event_id="Ev0HELD")
    await rig.until(lambda: len(rig.fake.file_requests) == 1)
    retry = await send(rig, event, event_id="Ev0HELD", **RETRY)
    twin = {**event, "type": "message", "channel_type": "channel", "text": f"<@{BOT_USER}> read it"}
    twin_task = await send(rig, twin, event_id="Ev0TWIN")

    hold.set()
    assert [await original, await retry, await twin_task] == [200, 200, 200]
    assert await rig.event(mention("barrier", ts="1700000020.000200", thread_ts=thread)) == 200
    await rig.until(lambda: rig.jobs_done(2))
    assert len(rig.repository.jobs()) == 2
    assert len(rig.fake.file_requests) == 1
    assert questions(rig, thread) == ["read it + once.log", "barrier"]
    assert answered(rig, thread, "read it", "barrier") == ["read it", "barrier"]
    await rig.until(lambda: rig.adapter._arrivals.order.in_flight() == 0)  # every line is gone


async def test_a_follow_up_in_an_auto_answer_thread_waits_for_the_question_that_started_it(
    rig: Rig,
) -> None:
    """``mode auto``: a top-level question with a held file; the asker's follow-up in its thread,
    sent meanwhile, is stored and answered after it (the auto-answer route sees the thread)."""
    rig.repository.update_channel_config(
        platform="slack", workspace=TEAM, channel=CHANNEL, changes={"answer_mode": AnswerMode.AUTO}
    )
    thread = "1700000030.000100"
    hold = asyncio.Event()
    question = await send(
        rig,
        with_file(rig, said("the agent crashes", ts=thread, subtype="file_share"), "c.log", hold),
    )
    await rig.until(lambda: len(rig.fake.file_requests) == 1)
    follow_up = await send(
        rig, said("it also happens at boot", ts="1700000030.000200", thread_ts=thread)
    )
    assert await rig.event(mention("elsewhere", ts="1700000031.000100")) == 200
    await rig.until(lambda: rig.jobs_done(1))
    assert questions(rig, thread) == []

    hold.set()
    assert [await question, await follow_up] == [200, 200]
    await rig.until(lambda: rig.jobs_done(3))
    assert questions(rig, thread) == [
        "the agent crashes + c.log",
        "it also happens at boot",
    ]
    assert answered(rig, thread, "crashes", "at boot") == ["crashes", "at boot"]


async def test_a_slash_command_is_acked_at_once_and_stored_after_the_dm_message_before_it(
    rig: Rig,
) -> None:
    """In a DM, a message with a held file then ``/solar QUESTION``: the command is acked while
    the download is held (Slack's three seconds), its question stored after the message."""
    hold = asyncio.Event()
    dm = {
        "type": "message",
        "channel_type": "im",
        "channel": DM,
        "user": "U0ALICE",
        "text": "look at this",
        "ts": "1700000040.000100",
        "subtype": "file_share",
    }
    message = await send(rig, with_file(rig, dm, "dm.log", hold))
    await rig.until(lambda: len(rig.fake.file_requests) == 1)
    status, ack, _ = await rig.command("and then this", channel=DM)
    assert status == 200 and ack_text(ack)  # acked while the download is held
    # Its handling goes on after the ack: waiting for its turn, or (out of order) storing it.
    await rig.until(lambda: rig.adapter._arrivals.waiting == 1 or bool(questions(rig, channel=DM)))
    assert not hold.is_set() and questions(rig, channel=DM) == []

    hold.set()
    assert await message == 200
    await rig.until(lambda: rig.jobs_done(2))
    assert questions(rig, channel=DM) == [
        "look at this + dm.log",
        "and then this",
    ]


async def test_socket_mode_keeps_the_same_order_and_acks_each_envelope_once_it_is_stored(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """Over Socket Mode (envelopes, each handled in a task of slack_sdk's): the held question's
    thread waits, another thread is answered, and each envelope is acked once it is stored."""
    async with start_rig(
        tmp_path,
        fake,
        mode="socket",
        signing_secret=None,
        app_token=APP_TOKEN,
        attachments=AttachmentOptions(max_bytes=4096, timeout_seconds=30.0),
    ) as rig:
        thread = "1700000050.000100"
        hold = asyncio.Event()

        async def envelope(event: dict[str, Any]) -> str:
            received = rig.adapter._arrivals.received
            sent = await fake.send_envelope("events_api", json.loads(event_body(event)))
            await rig.until(lambda: rig.adapter._arrivals.received > received)
            return sent

        def acked(envelope_id: str) -> bool:
            return any(a.get("envelope_id") == envelope_id for a in fake.acks)

        first = await envelope(with_file(rig, mention("first", ts=thread), "s.log", hold))
        await rig.until(lambda: len(fake.file_requests) == 1)
        second = await envelope(mention("second", ts="1700000050.000200", thread_ts=thread))
        elsewhere = await envelope(mention("elsewhere", ts="1700000051.000100"))
        await rig.until(lambda: acked(elsewhere) and rig.jobs_done(1))
        assert not acked(first) and not acked(second) and questions(rig, thread) == []

        hold.set()
        await rig.until(lambda: acked(first) and acked(second) and rig.jobs_done(3))
        assert questions(rig, thread) == ["first + s.log", "second"]
        assert answered(rig, thread, "first", "second") == ["first", "second"]
