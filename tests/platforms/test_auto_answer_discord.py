"""Auto-answer channels on Discord, end to end: the real discord.py client against
tests/support/discord_fake.py (gateway + REST, threads started from messages), the real intake,
SQLite queue and worker, and the fake engine.

``@solarbot !mode auto`` (admins only) makes every new top-level message of a person answered in
a thread created from it; the asker's follow-ups there continue the conversation; someone else
writing there hands the thread to a human until ``!resume``; bots, webhooks, the bot itself, edits
and system messages never get an answer; replays are answered once; mention channels unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.discord import DiscordAdapter, DiscordOptions
from bot import texts
from bot.handoff_followups import FollowupPolicy, HandoffFollowups
from bot.intake import Intake
from bot.records import AnswerMode
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.discord_rig import (
    ADMIN_ROLE,
    FAST,
    GENERAL,
    GUILD,
    MEMBER_ROLE,
    MENTION,
    RANDOM,
    THREAD,
    Rig,
    command,
    home_discord,
    start_rig,
)
from tests.support.hours_rig import Clock

ANA, BOB = 500, 600  # the asker, a support agent


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start_rig(fake, sqlite_url)
    yield rig
    await rig.stop()
    rig.repository.close()


def auto_mode(rig: Rig, channel: int = GENERAL) -> None:
    rig.repository.update_channel_config(
        platform="discord",
        workspace=str(GUILD),
        channel=str(channel),
        changes={"answer_mode": AnswerMode.AUTO},
    )


def threads_started(fake: FakeDiscord) -> list[str]:
    """Paths of the thread creations Discord accepted."""
    return [c.path for c in fake.rest("POST", r"/threads$") if c.status == 200]


async def ask(rig: Rig, text: str, *, author: int = ANA, name: str = "ana") -> int:
    """A top-level question in GENERAL; returns its id (= its thread's, once started)."""
    posted = await rig.fake.user_message(GENERAL, text, author_id=author, author_name=name)
    return int(posted["id"])


async def test_auto_mode_answers_in_a_thread_follows_up_goes_quiet_for_an_agent_and_resumes(
    rig: Rig,
) -> None:
    fake = rig.fake
    refusal = await command(rig, GENERAL, "!mode auto", roles=(MEMBER_ROLE,))
    assert refusal.startswith("Sorry, only admins can use `@solarbot !mode`")
    assert (await command(rig, GENERAL, "!mode auto", roles=(ADMIN_ROLE,))).startswith("Mode auto")
    status = await command(rig, GENERAL, "!status")
    assert "**Mode:** auto" in status and "**Waiting for a human:** 0" in status
    commands_answered = len(rig.replies(GENERAL))

    # A top-level question, no mention: a thread is started from it and answered there.
    question = await ask(rig, "How do I reset my password?")
    await rig.until(lambda: rig.jobs_done(1))
    assert threads_started(fake) == [f"/channels/{GENERAL}/messages/{question}/threads"]
    thread = fake.channels[question]
    assert thread["owner_id"] == str(BOT_ID) and thread["parent_id"] == str(GENERAL)
    assert thread["name"] == "How do I reset my password?"
    assert rig.replies(question) == ["You said: Ana: How do I reset my password?"]
    assert len(rig.replies(GENERAL)) == commands_answered  # nothing more in the channel
    assert "message_reference" not in fake.bot_messages(question)[0]

    # The asker follows up in the thread: answered with the thread's history.
    await fake.user_message(question, "It says expired.", author_id=ANA)
    await rig.until(lambda: rig.jobs_done(2))
    assert rig.replies(question)[-1] == "You said: Ana: It says expired."
    prompt = rig.engine.prompts[1]
    assert "How do I reset my password?" in prompt and "It says expired." in prompt
    assert rig.stored(GENERAL, thread=question)[:2] == [
        ("user", "How do I reset my password?"),
        ("assistant", "You said: Ana: How do I reset my password?"),
    ]

    # A support agent writes in the thread: quiet there from now on, and status says so.
    await fake.user_message(question, "Hi Ana, I'll take it.", author_id=BOB, author_name="bob")
    await fake.user_message(question, "Thanks Bob!", author_id=ANA)
    await asyncio.sleep(0.3)
    assert len(rig.replies(question)) == 2
    assert [p for p in rig.engine.prompts if "Thanks Bob" in p] == []
    assert "**Waiting for a human:** 1 conversation(s)" in await command(rig, GENERAL, "!status")

    # ``!resume`` (anyone, here the agent in the thread) brings it back.
    assert "I'm back" in await command(rig, question, "!resume")
    await fake.user_message(question, "One more thing", author_id=ANA)
    await rig.until(lambda: rig.jobs_done(3))
    assert rig.replies(question)[-1] == "You said: Ana: One more thing"
    assert "I'll take it." in rig.engine.prompts[-1]


def never_answered(fake: FakeDiscord, channel: int) -> list[dict[str, Any]]:
    """Messages that must never be answered nor hand a thread over: bots, webhooks, the bot
    itself, system messages (as someone other than the asker), the asker's message without
    text."""
    by_bob = {"author_id": BOB, "author_name": "bob"}
    return [
        {"content": "a bot", "author_id": 800, "author_name": "otherbot", "bot": True},
        {"content": "me", "author_id": BOT_ID, "author_name": "solarbot", "bot": True},
        {"content": "a webhook", "webhook_id": 42, **by_bob},
        {"content": "", "message_type": 7, **by_bob},  # a member joined
        {"content": "pinned", "message_type": 6, **by_bob},
        {"content": "a thread", "message_type": 18, **by_bob},
        {"content": "", "message_type": 21, **by_bob},  # a thread's starter message
        {"content": "boosted", "message_type": 8, **by_bob},
        {"content": "", "author_id": ANA},  # the asker, without text: nothing to answer
    ]


async def test_bots_webhooks_the_bot_itself_edits_and_system_messages_are_never_answered(
    rig: Rig,
) -> None:
    fake = rig.fake
    auto_mode(rig)
    question = await ask(rig, "first question")
    await rig.until(lambda: rig.jobs_done(1))
    for channel in (GENERAL, question):
        for shape in never_answered(fake, channel):
            await fake.user_message(channel, **shape)
    # Edits: the asker's question and an agent's message, edited.
    await fake.edit_user_message(question, "first question, edited")
    other = await fake.user_message(RANDOM, "elsewhere", author_id=BOB)
    await fake.edit_user_message(int(other["id"]), "elsewhere, edited")
    # The asker's follow-up is still answered: nothing above handed the thread over.
    await fake.user_message(question, "a person", author_id=ANA)
    await rig.until(lambda: rig.jobs_done(2))
    await asyncio.sleep(0.3)
    assert len(rig.repository.jobs()) == 2
    assert threads_started(fake) == [f"/channels/{GENERAL}/messages/{question}/threads"]
    assert rig.replies(question) == ["You said: Ana: first question", "You said: Ana: a person"]
    assert rig.replies(GENERAL) == [] and rig.replies(RANDOM) == []
    assert (
        rig.repository.handoffs_in_channel(
            platform="discord", workspace=str(GUILD), channel=str(GENERAL)
        )
        == 0
    )


async def test_replayed_events_start_one_thread_and_get_one_answer(rig: Rig) -> None:
    fake = rig.fake
    auto_mode(rig)
    payload = await fake.user_message(GENERAL, "Is the VPN down?", author_id=ANA)
    question = int(payload["id"])
    for _ in range(2):
        await fake.dispatch_message(payload)  # gateway replays
    await rig.until(lambda: rig.jobs_done(1))
    follow = await fake.user_message(question, "Still down.", author_id=ANA)
    await fake.dispatch_message(follow)
    agent = await fake.user_message(question, "Looking.", author_id=BOB, author_name="bob")
    await fake.dispatch_message(agent)
    await rig.until(lambda: rig.jobs_done(2))
    await asyncio.sleep(0.3)
    assert len(threads_started(fake)) == 1
    assert [c.status for c in fake.rest("POST", r"/threads$")] == [200, 400, 400]  # 160004
    assert rig.replies(question) == [
        "You said: Ana: Is the VPN down?",
        "You said: Ana: Still down.",
    ]
    assert rig.stored(GENERAL, thread=question).count(("user", "Looking.")) == 1
    assert len(rig.engine.requests) == 2


async def test_mention_channels_are_unchanged_and_commands_are_answered_in_place(
    rig: Rig,
) -> None:
    fake = rig.fake
    await fake.user_message(GENERAL, "no mention here", author_id=ANA)
    asked = await fake.user_message(GENERAL, f"{MENTION} with a mention", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.replies(GENERAL) == ["You said: Ana: with a mention"]
    assert fake.bot_messages(GENERAL)[0]["message_reference"]["message_id"] == asked["id"]
    assert threads_started(fake) == []
    # In an auto channel a command is still a command, answered in place; a mention is a question
    # like any other (in its thread).
    auto_mode(rig, RANDOM)
    assert "auto" in await command(rig, RANDOM, "!mode")
    mentioned = await fake.user_message(RANDOM, f"{MENTION} a question", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(2))
    assert threads_started(fake) == [f"/channels/{RANDOM}/messages/{mentioned['id']}/threads"]
    assert rig.replies(int(mentioned["id"])) == ["You said: Ana: a question"]


async def test_where_no_thread_can_be_started_the_answer_is_a_reply_in_the_channel(
    rig: Rig,
) -> None:
    fake = rig.fake
    auto_mode(rig)
    fake.fail_next("POST", r"/threads$", status=403)  # Missing Permissions
    question = await ask(rig, "any news?")
    await rig.until(lambda: rig.jobs_done(1))
    assert threads_started(fake) == []
    (reply,) = fake.bot_messages(GENERAL)
    assert reply["content"] == "You said: Ana: any news?"
    assert reply["message_reference"]["message_id"] == str(question)


async def test_a_persons_plain_message_in_a_handed_off_conversation_cancels_its_reminder(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    """Reminders on (15 min), mention channels: Ana asks for a human in GENERAL and in a thread.
    Bob answers in GENERAL without mentioning the bot (the adapter sees it now): that reminder
    goes; Ana's own plain message in the thread leaves the thread's reminder, sent once."""
    clock = Clock(datetime(2026, 12, 7, 11, 0, tzinfo=UTC))  # no support hours: always open
    policy = FollowupPolicy(reminder_minutes=15, clock=clock)
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, **FAST))
    intake = Intake(repository, handoff_keywords=("talk to a human",), followups=policy)
    intake.register(adapter)
    await adapter.start(intake)
    followups = HandoffFollowups(repository, {"discord": adapter}, policy=policy)
    try:
        for channel in (GENERAL, THREAD):
            await fake.user_message(channel, f"{MENTION} talk to a human", mentions=(BOT_ID,))
        async with asyncio.timeout(10):
            while not (fake.bot_messages(GENERAL) and fake.bot_messages(THREAD)):
                await asyncio.sleep(0.01)
        await fake.user_message(THREAD, "hello? anyone?", author_id=ANA)
        await fake.user_message(GENERAL, "Ana, I'm here.", author_id=BOB, author_name="bob")
        await fake.user_message(RANDOM, MENTION, mentions=(BOT_ID,))  # handled after them
        async with asyncio.timeout(10):
            while not fake.bot_messages(RANDOM):
                await asyncio.sleep(0.01)
        clock.now += timedelta(minutes=16)
        assert await followups.send_due() == 1
        assert await followups.send_due() == 0
        assert len(fake.bot_messages(GENERAL)) == 1  # the handoff notice only
        assert fake.bot_messages(THREAD)[-1]["content"] == texts.HANDOFF_REMINDER.format(
            ago="16 min"
        )
    finally:
        await adapter.stop()
        repository.close()


@pytest.mark.parametrize(
    "shape",
    [
        {"content": "On my way."},
        {"content": "", "attachments": (("fix.png", "image/png"),)},  # a screenshot alone
        {"content": ""},  # no text Discord showed us (an embed, a poll)
    ],
    ids=["plain", "an attachment", "no text"],
)
async def test_any_message_of_another_person_in_an_auto_thread_hands_it_over(
    rig: Rig, shape: dict[str, Any]
) -> None:
    auto_mode(rig)
    question = await ask(rig, "my printer is on fire")
    await rig.until(lambda: rig.jobs_done(1))
    await rig.fake.user_message(question, author_id=BOB, author_name="bob", **shape)
    await rig.fake.user_message(question, "thanks", author_id=ANA)
    await asyncio.sleep(0.3)
    assert (
        rig.repository.handoffs_in_channel(
            platform="discord", workspace=str(GUILD), channel=str(GENERAL)
        )
        == 1
    )
    assert len(rig.replies(question)) == 1 and len(rig.engine.requests) == 1
    assert rig.stored(GENERAL, thread=question)[-1][0] == "user"
