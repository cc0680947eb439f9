"""Per-conversation ingress order on Discord (adapters/conversation_order.py), end to end: the real
discord.py client against tests/support/discord_fake.py, whose CDN holds a file's download until
the test sets an ``asyncio.Event``. A message waiting for its files holds up only its own
conversation: questions elsewhere are stored and answered meanwhile, and the messages after it in
its conversation are stored, and answered, after it, in gateway order. No timing is asserted: the
test decides when the download ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.attachment_download import AttachmentOptions
from adapters.discord import DiscordAdapter, DiscordOptions
from bot.generation.fake import FakeEngine
from bot.records import AnswerMode, ConversationKey
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord, Upload
from tests.support.discord_rig import (
    FAST,
    GENERAL,
    GUILD,
    MENTION,
    RANDOM,
    THREAD,
    Rig,
    home_discord,
)
from tests.support.rig import quick_worker_options

SLOW_FILE = b"ERROR: disk full on /var (slow file)\n"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch, elsewhere=False) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await Rig.start(
        DiscordAdapter(
            DiscordOptions(
                token=fake.token,
                attachments=AttachmentOptions(max_bytes=4096, timeout_seconds=30.0),
                **FAST,
            )
        ),
        repository=Repository.open(sqlite_url),
        engine=FakeEngine(script=lambda prompt: f"Answer {prompt.count('[file: ')}."),
        options=quick_worker_options(attachment_tokens=500),
        fake=fake,
    )
    yield rig
    await rig.stop()
    rig.repository.close()


def slow(name: str, hold: asyncio.Event) -> Upload:
    return Upload(name, "text/plain", SLOW_FILE, hold=hold)


async def ask(rig: Rig, channel: int, text: str, *uploads: Upload) -> int:
    payload = await rig.fake.user_message(
        channel, f"{MENTION} {text}", mentions=(BOT_ID,), uploads=uploads
    )
    return int(payload["id"])


def answered(rig: Rig, channel: int) -> list[int]:
    """The messages the bot's replies in ``channel`` answer, in the order they were posted."""
    return [
        int(message["message_reference"]["message_id"])
        for message in rig.fake.bot_messages(channel)
        if message.get("message_reference")
    ]


def questions(rig: Rig, channel: int, *, thread: int = 0) -> list[str]:
    return [text for role, text in rig.stored(channel, thread=thread) if role == "user"]


async def test_a_slow_download_does_not_hold_up_other_channels(rig: Rig) -> None:
    hold = asyncio.Event()
    await ask(rig, GENERAL, "what does this log say?", slow("disk.log", hold))
    await rig.until(lambda: len(rig.fake.cdn_requests) == 1)  # the download has started
    quick = await ask(rig, RANDOM, "a quick one")
    thread = await ask(rig, THREAD, "and one in a thread")

    # Both are stored and answered while the download in #general is still held.
    await rig.until(lambda: rig.jobs_done(2) and len(answered(rig, THREAD)) == 1)
    assert not hold.is_set()
    assert answered(rig, RANDOM) == [quick] and answered(rig, THREAD) == [thread]
    assert questions(rig, RANDOM) == ["a quick one"]
    assert rig.stored(GENERAL) == []  # not stored yet: its files are not read

    hold.set()
    await rig.until(lambda: rig.jobs_done(3))
    key = ConversationKey(platform="discord", workspace=str(GUILD), channel=str(GENERAL))
    question = rig.repository.messages(key)[0]
    assert [a.name for a in question.attachments] == ["disk.log"]
    assert "disk full on /var" in rig.engine.prompts[-1]


async def test_the_messages_after_a_slow_one_in_its_conversation_keep_gateway_order(
    rig: Rig,
) -> None:
    """First a question with a slow file, then two plain ones in the same channel (and one in
    another channel, which goes first): stored and answered in the order they were sent."""
    hold = asyncio.Event()
    first = await ask(rig, GENERAL, "first, with a file", slow("first.log", hold))
    await rig.until(lambda: len(rig.fake.cdn_requests) == 1)
    second = await ask(rig, GENERAL, "second, plain")
    third = await ask(rig, GENERAL, "third, plain")
    elsewhere = await ask(rig, RANDOM, "meanwhile elsewhere")

    # The question sent after both plain ones, in another channel, is answered; they wait.
    await rig.until(lambda: answered(rig, RANDOM) == [elsewhere] and rig.jobs_done(1))
    assert rig.stored(GENERAL) == [] and answered(rig, GENERAL) == []

    hold.set()
    await rig.until(lambda: rig.jobs_done(4))
    assert questions(rig, GENERAL) == [
        "first, with a file\n[attachment: first.log (text/plain)]",
        "second, plain",
        "third, plain",
    ]
    assert answered(rig, GENERAL) == [first, second, third]
    # The second was answered with the first (and its file) in its history.
    second_prompt = next(
        p for p in rig.engine.prompts if "second, plain" in p and "third, plain" not in p
    )
    assert "disk full on /var" in second_prompt and "Answer 1." in second_prompt


async def test_a_replay_during_the_download_is_still_one_question_and_one_answer(
    rig: Rig,
) -> None:
    hold = asyncio.Event()
    payload = await rig.fake.user_message(
        GENERAL, f"{MENTION} read it", mentions=(BOT_ID,), uploads=(slow("once.log", hold),)
    )
    await rig.until(lambda: len(rig.fake.cdn_requests) == 1)
    await rig.fake.dispatch_message(payload)  # the gateway replays it while it downloads
    await rig.fake.dispatch_message(payload)
    hold.set()
    await rig.until(lambda: rig.jobs_done(1))
    await ask(rig, GENERAL, "barrier")  # after both replays in the same line
    await rig.until(lambda: rig.jobs_done(2))
    assert answered(rig, GENERAL) == [int(payload["id"]), answered(rig, GENERAL)[-1]]
    assert len(rig.repository.jobs()) == 2
    assert questions(rig, GENERAL)[0].startswith("read it")
    await rig.until(lambda: rig.adapter._arrivals.in_flight() == 0)  # every line is gone


async def test_a_follow_up_in_an_auto_answer_thread_waits_for_the_question_that_started_it(
    rig: Rig,
) -> None:
    """``mode auto``: the thread is started from the question before its files are downloaded;
    the asker's follow-up written there meanwhile is stored, and answered, after the question."""
    rig.repository.update_channel_config(
        platform="discord",
        workspace=str(GUILD),
        channel=str(GENERAL),
        changes={"answer_mode": AnswerMode.AUTO},
    )
    hold = asyncio.Event()
    posted = await rig.fake.user_message(
        GENERAL, "the agent crashes, log attached", uploads=(slow("crash.log", hold),)
    )
    thread = int(posted["id"])  # the thread started from a message has the message's id
    await rig.until(
        lambda: len(rig.fake.cdn_requests) == 1 and bool(rig.fake.rest("POST", r"/threads$"))
    )
    await rig.fake.user_message(thread, "it also happens at boot")
    elsewhere = await ask(rig, RANDOM, "meanwhile elsewhere")
    await rig.until(lambda: answered(rig, RANDOM) == [elsewhere] and rig.jobs_done(1))
    assert rig.stored(GENERAL, thread=thread) == []

    hold.set()
    await rig.until(lambda: rig.jobs_done(3))
    assert questions(rig, GENERAL, thread=thread) == [
        "the agent crashes, log attached\n[attachment: crash.log (text/plain)]",
        "it also happens at boot",
    ]
    follow_up = rig.engine.prompts[-1]
    assert "disk full on /var" in follow_up and "it also happens at boot" in follow_up
