"""Auto-answer channels on Slack, end to end: signed HTTP events into the real slack-bolt app, the
real Service (intake -> SQLite -> worker, the fake engine) and the local fake Slack Web API.

``/solar mode auto`` (admins only) makes every new top-level message of a person answered in its
thread; the asker's follow-ups there continue the conversation; someone else writing there hands
the thread to a human until ``/solar resume``; bots, the bot itself, edits, joins and other
system messages never get an answer; replays are answered once; mention channels are unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot import texts
from bot.generation.fake import FakeEngine
from bot.records import AnswerMode, ConversationKey
from tests.support.hours_rig import ASKED, BERLIN, Clock, serving, settle
from tests.support.slack_fake import BOT_ID, BOT_USER, TEAM, FakeSlack
from tests.support.slack_rig import ADMIN, Rig, mention, say, start_rig

CHANNEL = "C0GENERAL"
QUESTION_TS = "1690100000.000001"
RETRY = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}


def said(
    text: str,
    *,
    ts: str,
    thread_ts: str | None = None,
    user: str = "U0ALICE",
    channel: str = CHANNEL,
    **extra: Any,
) -> dict[str, Any]:
    """A ``message`` event as Slack sends it with the message.channels subscription."""
    event: dict[str, Any] = {
        "type": "message",
        "channel_type": "channel",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "team": TEAM,
        **extra,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, fake) as value:
        yield value


async def auto_mode(rig: Rig, channel: str = CHANNEL) -> None:
    rig.repository.update_channel_config(
        platform="slack", workspace=TEAM, channel=channel, changes={"answer_mode": AnswerMode.AUTO}
    )


def answers(rig: Rig, thread_ts: str | None) -> list[str]:
    return [m.text for m in rig.fake.thread(CHANNEL, thread_ts)]


async def test_auto_mode_answers_in_the_thread_follows_up_goes_quiet_for_an_agent_and_resumes(
    rig: Rig,
) -> None:
    refused = await say(rig, "mode auto", user="U0BOB", name="bob-mode")
    assert "only admins" in refused
    assert await rig.event(said("Mode?", ts="1690100000.000000")) == 200
    assert "Mode auto" in await say(rig, "mode auto", user=ADMIN, name="admin-mode")
    status = await say(rig, "status", user="U0BOB", name="status-1")
    assert "*Mode:* auto" in status and "*Waiting for a human:* 0 conversation(s)" in status

    # A top-level question, no mention: answered in its own thread.
    assert await rig.event(said("How do I reset my password?", ts=QUESTION_TS)) == 200
    await rig.until(lambda: rig.jobs_done(1))
    assert answers(rig, QUESTION_TS) == ["You said: Alice: How do I reset my password?"]
    assert answers(rig, None) == []  # nothing at the top of the channel
    # The message before auto mode was not answered.
    assert (
        rig.repository.conversation_id(
            ConversationKey(
                platform="slack", workspace=TEAM, channel=CHANNEL, thread="1690100000.000000"
            )
        )
        is None
    )

    # The asker follows up in the thread, without a mention: the thread's history goes along.
    await rig.event(said("It says expired.", ts="1690100000.000002", thread_ts=QUESTION_TS))
    await rig.until(lambda: rig.jobs_done(2))
    assert answers(rig, QUESTION_TS)[-1] == "You said: Alice: It says expired."
    prompt = rig.engine.prompts[1]
    assert "How do I reset my password?" in prompt and "It says expired." in prompt
    assert prompt.index("How do I reset") < prompt.index("You said: Alice: How do I reset")

    # A support agent writes in the thread: the bot goes quiet there, and status says so.
    await rig.event(
        said("Hi Alice, I'll take it.", ts="1690100000.000003", thread_ts=QUESTION_TS, user="U0BOB")
    )
    await rig.event(said("Thanks Bob!", ts="1690100000.000004", thread_ts=QUESTION_TS))
    await asyncio.sleep(0.3)
    assert len(answers(rig, QUESTION_TS)) == 2
    assert [p for p in rig.engine.prompts if "Thanks Bob" in p] == []
    status = await say(rig, "status", user="U0BOB", name="status-2")
    assert "*Waiting for a human:* 1 conversation(s)" in status
    stored = rig.stored(CHANNEL, QUESTION_TS)
    assert ("user", "Hi Alice, I'll take it.") in stored and ("user", "Thanks Bob!") not in stored

    # Other questions in the channel are still answered.
    await rig.event(said("Another question", ts="1690100000.000005", user="U0CAROL"))
    await rig.until(lambda: rig.jobs_done(3))
    assert answers(rig, "1690100000.000005") == ["You said: Carol: Another question"]

    # ``resume`` brings it back: the asker's next message is answered, with the agent's words in
    # the history.
    assert "I'm back" in await say(rig, "resume", user="U0BOB", name="resume")
    await rig.event(said("One more thing", ts="1690100000.000006", thread_ts=QUESTION_TS))
    await rig.until(lambda: rig.jobs_done(4))
    assert answers(rig, QUESTION_TS)[-1] == "You said: Alice: One more thing"
    assert "I'll take it." in rig.engine.prompts[-1]


def never_answered(ts: str) -> list[dict[str, Any]]:
    """Event shapes in an auto channel that must never get an answer (each its own ts), from
    someone other than the asker where they carry a user (so that they would hand a thread over
    were they taken for a person's message)."""
    nested = {"type": "message", "user": "U0ALICE", "text": "edited", "ts": "1690000000.000001"}
    return [
        said("a bot", ts=f"{ts}1", bot_id="B0OTHER", user="U0OTHERBOT"),
        said("a bot message", ts=f"{ts}2", subtype="bot_message", bot_id="B0OTHER", user=""),
        said("me myself", ts=f"{ts}3", user=BOT_USER, bot_id=BOT_ID),
        said("<@U0BOB> has joined the channel", ts=f"{ts}4", subtype="channel_join", user="U0BOB"),
        said("", ts=f"{ts}5", subtype="message_changed", message=nested, user=""),
        said("", ts=f"{ts}6", subtype="message_deleted", deleted_ts=nested["ts"], user=""),
        said("set the topic", ts=f"{ts}7", subtype="channel_topic", user="U0BOB"),
        said("left", ts=f"{ts}8", subtype="channel_leave", user="U0BOB"),
        said("pinned", ts=f"{ts}9", subtype="pinned_item", user="U0BOB"),
        said("slackbot here", ts=f"{ts}10", user="USLACKBOT"),
        said("an app user", ts=f"{ts}11", user="U0WORKFLOW"),  # users.info: is_bot
        said("no author", ts=f"{ts}12", user=""),
        said("from an app", ts=f"{ts}13", bot_profile={"id": "B0APP"}),
        said("broadcast reply", ts=f"{ts}14", subtype="thread_broadcast", thread_ts="1.0"),
        said("only a thread", ts=f"{ts}15", thread_ts="1690000099.000001"),  # nobody asked there
    ]


async def test_bots_the_bot_itself_edits_joins_and_system_messages_are_never_answered(
    rig: Rig,
) -> None:
    """Each shape at the top of the channel and in an auto thread: none is answered, and none
    hands the thread to a human (only a person other than the asker does)."""
    await auto_mode(rig)
    rig.fake.bot_users.add("U0WORKFLOW")
    await rig.event(said("first question", ts=QUESTION_TS))
    await rig.until(lambda: rig.jobs_done(1))
    shapes = never_answered("1690200000.0000")
    in_thread = [
        {**shape, "ts": shape["ts"] + "7", "thread_ts": shape.get("thread_ts", QUESTION_TS)}
        for shape in shapes
    ]
    for shape in shapes + in_thread:
        assert await rig.event(shape) == 200, shape
    # The listener runs before Slack gets its 200 (process_before_response): all were handled.
    assert len(rig.repository.jobs()) == 1
    assert (
        rig.repository.handoffs_in_channel(platform="slack", workspace=TEAM, channel=CHANNEL) == 0
    )
    # The asker's follow-up is still answered: the thread was not handed over.
    await rig.event(said("a person", ts="1690200000.000099", thread_ts=QUESTION_TS))
    await rig.until(lambda: rig.jobs_done(2))
    await asyncio.sleep(0.2)
    assert len(rig.repository.jobs()) == 2
    # The bot posted only those two answers, in the question's thread.
    assert [m.thread_ts for m in rig.fake.messages.values()] == [QUESTION_TS, QUESTION_TS]
    assert len(rig.engine.requests) == 2


async def test_replays_and_the_mention_twin_of_a_message_are_answered_once(rig: Rig) -> None:
    await auto_mode(rig)
    question = said("Is the VPN down?", ts=QUESTION_TS)
    await asyncio.gather(
        rig.event(question, event_id="Ev0Q"),
        rig.event(question, event_id="Ev0Q", **RETRY),
        rig.event(question, event_id="Ev0Q", **{**RETRY, "X-Slack-Retry-Num": "2"}),
    )
    # A message that mentions the bot comes twice, as app_mention and as message: one answer.
    twin = f"<@{BOT_USER}> and the wiki?"
    await asyncio.gather(
        rig.event(said(twin, ts="1690100000.000007")),
        rig.event(mention("and the wiki?", ts="1690100000.000007")),
    )
    await rig.until(lambda: rig.jobs_done(2))
    follow = said("Still down.", ts="1690100000.000008", thread_ts=QUESTION_TS)
    await rig.event(follow, event_id="Ev0F")
    await rig.event(follow, event_id="Ev0F", **RETRY)
    agent = said("Looking.", ts="1690100000.000009", thread_ts=QUESTION_TS, user="U0BOB")
    await asyncio.gather(*(rig.event(agent, event_id="Ev0A", **RETRY) for _ in range(3)))
    await rig.until(lambda: rig.jobs_done(3))
    await asyncio.sleep(0.3)
    assert answers(rig, QUESTION_TS) == [
        "You said: Alice: Is the VPN down?",
        "You said: Alice: Still down.",
    ]
    assert answers(rig, "1690100000.000007") == ["You said: Alice: and the wiki?"]
    assert rig.stored(CHANNEL, QUESTION_TS).count(("user", "Looking.")) == 1
    assert len(rig.engine.requests) == 3


async def test_mention_channels_answer_mentions_only_as_before(rig: Rig) -> None:
    await rig.event(said("no mention here", ts=QUESTION_TS))
    await rig.event(mention("with a mention", ts="1690100000.000002"))
    await rig.until(lambda: rig.jobs_done(1))
    # A follow-up without a mention in the mention's thread: ignored, as before.
    await rig.event(said("and without", ts="1690100000.000003", thread_ts="1690100000.000002"))
    await rig.event(
        said("someone else", ts="1690100000.000004", thread_ts="1690100000.000002", user="U0BOB")
    )
    await rig.event(mention("again", ts="1690100000.000005", thread_ts="1690100000.000002"))
    await rig.until(lambda: rig.jobs_done(2))
    await asyncio.sleep(0.2)
    assert answers(rig, QUESTION_TS) == [] and answers(rig, None) == []
    assert answers(rig, "1690100000.000002") == [
        "You said: Alice: with a mention",
        "You said: Alice: again",
    ]
    assert (
        rig.repository.handoffs_in_channel(platform="slack", workspace=TEAM, channel=CHANNEL) == 0
    )


async def test_a_persons_plain_message_in_a_handed_off_thread_cancels_the_reminder(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """Reminders on (30 min): an agent answers in the thread without mentioning the bot; the
    adapter now sees that message, so the reminder is never sent. The asker's own plain
    messages do not count as an answer."""
    clock = Clock(datetime(2026, 12, 7, 11, 0, tzinfo=BERLIN).astimezone(UTC))  # Monday 11:00
    async with serving(tmp_path, fake, clock) as rig:
        await rig.event(mention("talk to a human please", ts=ASKED))
        await fake.wait_for(lambda: bool(rig.thread()), within=10)
        [notice] = rig.thread()
        await rig.event(said("hello?", ts="1690002000.000002", thread_ts=ASKED))
        assert (
            len(
                rig.repository.claim_due_followups(
                    lease_seconds=0.01, now=clock.now + timedelta(minutes=31)
                )
            )
            == 1
        )
        await rig.event(said("On it.", ts="1690002000.000003", thread_ts=ASKED, user="U0AGENT"))
        clock.now += timedelta(hours=1)
        await settle(rig)
        assert rig.thread() == [notice]
        assert rig.repository.claim_due_followups(lease_seconds=1, now=clock.now) == []
        assert texts.HANDOFF_REMINDER.split("{")[0] not in "".join(rig.thread())


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"subtype": "file_share", "text": "", "files": [{"id": "F0LOG", "name": "trace.log"}]},
        {"subtype": "thread_broadcast"},
    ],
    ids=["plain", "a file without text", "also sent to the channel"],
)
async def test_any_message_of_another_person_in_an_auto_thread_hands_it_over(
    rig: Rig, extra: dict[str, Any]
) -> None:
    await auto_mode(rig)
    await rig.event(said("my printer is on fire", ts=QUESTION_TS))
    await rig.until(lambda: rig.jobs_done(1))
    agent = said("On my way.", ts="1690100000.000002", thread_ts=QUESTION_TS, user="U0BOB")
    await rig.event({**agent, **extra})
    await rig.event(said("thanks", ts="1690100000.000003", thread_ts=QUESTION_TS))
    await asyncio.sleep(0.3)
    assert (
        rig.repository.handoffs_in_channel(platform="slack", workspace=TEAM, channel=CHANNEL) == 1
    )
    assert len(answers(rig, QUESTION_TS)) == 1 and len(rig.engine.requests) == 1
    stored = rig.stored(CHANNEL, QUESTION_TS)
    assert stored[-1] == ("user", "On my way." if extra.get("text") != "" else texts.AUTO_NO_TEXT)


async def test_an_agent_taking_over_cancels_the_questions_still_waiting_in_the_thread(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """The answer being written finishes; the asker's next question, queued behind it in the
    same thread, is not answered once an agent has written there."""
    engine = FakeEngine(delay_per_chunk=0.15)
    async with start_rig(tmp_path, fake, engine=engine) as rig:
        await auto_mode(rig)
        await rig.event(said("first question here", ts=QUESTION_TS))
        await rig.until(lambda: len(rig.engine.requests) == 1)  # being answered
        await rig.event(said("and a second one", ts="1690100000.000002", thread_ts=QUESTION_TS))
        agent = said(
            "I'll handle this.", ts="1690100000.000003", thread_ts=QUESTION_TS, user="U0BOB"
        )
        await rig.event(agent)
        await rig.until(lambda: rig.jobs_done(1))
        await asyncio.sleep(0.4)
        assert answers(rig, QUESTION_TS) == ["You said: Alice: first question here"]
        assert len(rig.engine.requests) == 1
        statuses = sorted(job.status.value for job in rig.repository.jobs())
        assert statuses == ["cancelled", "cancelled", "done"]  # the follow-up and the handoff
