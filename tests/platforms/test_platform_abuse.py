"""Abuse through the chat platforms (issue 13, items 15, 17, 18 and 19), through the real clients:
discord.py against tests/support/discord_fake.py, signed requests to slack-bolt against tests/support/slack_fake.py,
the real intake, limits and SQLite/PostgreSQL repository.

- 15: the support group/role is pinged at most once per conversation and asker within a cooldown
  and at most N times per workspace and window, across processes (the state is in the database);
  a handoff over the limits still silences its conversation and says the team was notified.
- 17: chat sub-commands pass the rate limits; a refused user is told once per window, privately
  where the platform can (Slack: ephemeral), never quoting what they wrote.
- 18: 👍/👎 from accounts the bot otherwise ignores (other bots, users outside the allowed
  channels/roles) are not stored.
- 19: an admin's channel prompt is measured in tokens of the model's tokenizer when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from adapters.slack import SlackAdapter, SlackOptions
from bot import texts
from bot.conversation import TRUNCATION_MARKER, PromptBuilder, Turn
from bot.errors import PromptTooLongError
from bot.generation.fake import FakeTokenizer
from bot.generation.solar import render_solar_chat
from bot.limits import Limits, LimitSettings, Refusal
from bot.prompt_room import MIN_ROOM_TOKENS, FileTokenizer, PromptGauge
from bot.records import ConversationKey, Incoming
from bot.service import Service
from bot.settings import load_settings
from storage import database
from storage.repository import Repository
from tests.support.db_faults import refusing_inserts
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.discord_rig import (
    ADMIN_ROLE,
    GENERAL,
    GUILD,
    MEMBER_ROLE,
    MENTION,
    OTHER_GUILD,
    RANDOM,
    THREAD,
    command,
    start_rig,
)
from tests.support.discord_rig import Rig as DiscordRig
from tests.support.slack_fake import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.support.slack_fake import SIGNING_SECRET as SLACK_SIGNING_SECRET
from tests.support.slack_fake import TEAM, FakeSlack
from tests.support.slack_rig import ADMIN, ack_text, mention, say, slack_settings
from tests.support.slack_rig import reaction as slack_reaction
from tests.support.slack_rig import start_rig as start_slack_rig

START = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def discord_fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    fake.add_guild(GUILD, "home", roles={MEMBER_ROLE: "members", ADMIN_ROLE: "admins"})
    fake.add_channel(GUILD, GENERAL, "general")
    fake.add_channel(GUILD, RANDOM, "random")
    fake.add_thread(GUILD, GENERAL, THREAD, "a thread")
    fake.add_guild(OTHER_GUILD, "elsewhere")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    yield fake
    await fake.close()


# ------------------------------------------------------------- 15: handoff pings, the rule


def expected_pings(
    events: list[tuple[int, int, float]], *, cooldown: float, cap: int, window: float
) -> list[bool]:
    """The rule, written plainly: a ping unless this conversation or this asker had one within
    the cooldown, or the workspace had ``cap`` within the window (0 = rule off)."""
    pinged: list[tuple[int, int, float]] = []
    verdicts = []
    moment = 0.0
    for conversation, asker, gap in events:
        moment += gap
        recent = cooldown > 0 and any(
            (c == conversation or a == asker) and moment - t < cooldown for c, a, t in pinged
        )
        capped = (
            cap > 0 and window > 0 and sum(1 for _, _, t in pinged if moment - t < window) >= cap
        )
        verdicts.append(not recent and not capped)
        if verdicts[-1]:
            pinged.append((conversation, asker, moment))
    return verdicts


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 3),
            st.sampled_from([0.0, 0.5, 30.0, 299.0, 301.0, 900.0]),
        ),
        max_size=20,
    ),
    cooldown=st.sampled_from([0.0, 300.0, 900.0]),
    cap=st.integers(0, 4),
    window=st.sampled_from([0.0, 600.0, 3600.0]),
)
def test_handoff_pings_follow_the_cooldown_and_the_workspace_cap(
    repository: Repository,
    events: list[tuple[int, int, float]],
    cooldown: float,
    cap: int,
    window: float,
) -> None:
    workspace = uuid.uuid4().hex  # each example its own workspace in the shared database
    moment = START
    verdicts = []
    for conversation, asker, gap in events:
        moment += timedelta(seconds=gap)
        key = ConversationKey(
            platform="slack", workspace=workspace, channel="C1", thread=f"t{conversation}"
        )
        held_back = repository.claim_handoff_ping(
            key,
            requester=f"U{asker}",
            cooldown_seconds=cooldown,
            workspace_cap=cap,
            window_seconds=window,
            now=moment,
        )
        assert held_back in (None, "recent", "capped")
        verdicts.append(held_back is None)
    assert verdicts == expected_pings(events, cooldown=cooldown, cap=cap, window=window)


def test_processes_sharing_a_database_share_the_ping_cap(database_url: str) -> None:
    """Four repositories (as four ingress processes would have), 40 handoffs at the same moment in
    40 conversations by 40 askers: exactly the cap of pings, never more."""
    repositories = [Repository.open(database_url) for _ in range(4)]
    granted: list[str | None] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def ask(worker: int) -> None:
        barrier.wait()
        for n in range(5):
            key = ConversationKey(
                platform="discord", workspace="G", channel=f"c{worker}", thread=str(n)
            )
            verdict = repositories[worker % 4].claim_handoff_ping(
                key,
                requester=f"u{worker}-{n}",
                cooldown_seconds=900,
                workspace_cap=3,
                window_seconds=3600,
            )
            with lock:
                granted.append(verdict)

    threads = [threading.Thread(target=ask, args=(w,)) for w in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for repository in repositories:
            repository.close()
    assert granted.count(None) == 3 and granted.count("capped") == 37


# ---------------------------------------------------- 15: handoff pings, through the platforms


def role_pings(rig: DiscordRig, channel: int) -> list[str]:
    return [
        m["content"]
        for m in rig.fake.bot_messages(channel)
        if m.get("allowed_mentions", {}).get("roles")
    ]


async def test_discord_handoff_resume_loops_ping_the_support_role_once(
    discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    """`talk to a human` -> `!resume` -> `talk to a human`, again and again, by one member and by
    others: one ping; every handoff still silences the channel and is acknowledged."""
    rig = await start_rig(
        discord_fake,
        sqlite_url,
        handoff_keywords=("talk to a human",),
        support_role=ADMIN_ROLE,
        limits=Limits(LimitSettings(user_rate_per_minute=0, channel_rate_per_minute=0)),
    )
    try:
        for round_ in range(4):
            author = 500 + round_ % 2  # two members taking turns
            before = len(rig.replies(GENERAL))
            await discord_fake.user_message(
                GENERAL, f"{MENTION} talk to a human", mentions=(BOT_ID,), author_id=author
            )
            await rig.until(lambda: len(rig.replies(GENERAL)) > before)  # noqa: B023
            assert rig.repository.handoffs_in_channel(
                platform="discord", workspace=str(GUILD), channel=str(GENERAL)
            )
            assert "I'm back" in await command(rig, GENERAL, "!resume", roles=(MEMBER_ROLE,))
        pings = role_pings(rig, GENERAL)
        assert len(pings) == 1 and pings[0].startswith(f"<@&{ADMIN_ROLE}> ")
        notified = [r for r in rig.replies(GENERAL) if r == texts.HANDOFF_ALREADY_NOTIFIED]
        assert len(notified) == 3
        assert all(f"<@&{ADMIN_ROLE}>" not in r for r in notified)
        assert rig.engine.requests == []
    finally:
        await rig.stop()
        rig.repository.close()


async def test_slack_mentions_opening_new_threads_ping_the_group_once_per_asker_and_capped(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    """Every top-level mention is a new thread (a new conversation): one asker's eight requests
    ping once; eight askers' requests ping up to the workspace cap."""
    environ = {
        "SOLARBOT_HANDOFF_WORKSPACE_PINGS": "3",
        "SOLARBOT_USER_RATE_PER_MINUTE": "0",
        "SOLARBOT_CHANNEL_RATE_PER_MINUTE": "0",
    }
    async with start_slack_rig(
        tmp_path, slack_fake, support_group="S0SUPPORT", environ=environ
    ) as rig:
        for n in range(8):
            await rig.event(mention("talk to a human", ts=f"1690003000.{n:06d}"))
        for n in range(8):
            event = mention("talk to a human", ts=f"1690004000.{n:06d}")
            event["user"] = f"U0ASKER{n}"
            await rig.event(event)
        threads = [f"1690003000.{n:06d}" for n in range(8)] + [
            f"1690004000.{n:06d}" for n in range(8)
        ]
        await rig.until(lambda: all(rig.fake.thread("C0GENERAL", t) for t in threads))
        notices = [rig.fake.thread("C0GENERAL", t)[0].text for t in threads]
        pings = [text for text in notices if "<!subteam^S0SUPPORT>" in text]
        assert len(pings) == 3  # Alice once, then two other askers: the workspace cap
        assert notices[0].startswith("<!subteam^S0SUPPORT>")
        assert not any("<!subteam" in text for text in notices[1:8])
        unpinged = [text for text in notices if text == texts.HANDOFF_ALREADY_NOTIFIED]
        assert len(unpinged) == 13
        # Every one of them is handed over all the same.
        assert (
            rig.repository.handoffs_in_channel(
                platform="slack", workspace=TEAM, channel="C0GENERAL"
            )
            == 16
        )
        assert rig.engine.requests == []


# ------------------------------------------- 17: what the bot posts passes the rate limits


async def test_discord_commands_pass_the_limits_and_a_flood_gets_one_notice_without_quotes(
    discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    """Every sub-command (and the unknown one) takes a token; a member flooding commands or
    questions gets their burst answered and one refusal, which never repeats what they wrote."""
    words = [
        "!help",
        "!status",
        "!prompt",
        "!length",
        "!language",
        "!resume",
        "!forget",
        "!what",
        "",
    ]
    rig = await start_rig(
        discord_fake,
        sqlite_url,
        limits=Limits(
            LimitSettings(user_burst=3, user_rate_per_minute=0.5, channel_rate_per_minute=0)
        ),
    )
    try:
        for n in range(27):  # every sub-command, the unknown one and a bare mention (a hint)
            await discord_fake.user_message(
                GENERAL, f"{MENTION} {words[n % len(words)]}", mentions=(BOT_ID,), author_id=500
            )
        for n in range(10):
            await discord_fake.user_message(
                GENERAL, f"{MENTION} spam line {n}", mentions=(BOT_ID,), author_id=502
            )
        # Messages are handled in order: once a third member's command is answered, every
        # message before it has been handled.
        probe = await discord_fake.user_message(
            GENERAL, f"{MENTION} !help", mentions=(BOT_ID,), author_id=501
        )
        await rig.until(
            lambda: any(
                (m.get("message_reference") or {}).get("message_id") == probe["id"]
                for m in discord_fake.bot_messages(GENERAL)
            )
        )
        await rig.until(lambda: rig.jobs_done(3))
        replies = rig.replies(GENERAL)
        user_rate = texts.LIMIT_USER_RATE.split("{")[0]
        notices = [r for r in replies if r.startswith(user_rate)]
        assert len(notices) == 2  # one for each flooding member
        answers = [r for r in replies if r.startswith("You said:")]
        assert len(answers) == 3  # member 502's burst of questions
        assert not any("spam line" in r for r in replies if r not in answers)  # nothing quoted
        assert len(replies) - len(notices) - len(answers) == 3 + 1  # 500's burst + the probe
    finally:
        await rig.stop()
        rig.repository.close()


async def test_slack_commands_pass_the_limits_and_refusals_are_private_and_told_once(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    """`/solar help` x25, ten spam mentions and six spam `/solar` questions: each user's burst is
    answered, each is told once, privately (the command's ack, chat.postEphemeral, the
    response_url), and no refused text stays visible in the channel."""
    environ = {
        "SOLARBOT_USER_BURST": "3",
        "SOLARBOT_USER_RATE_PER_MINUTE": "0.5",
        "SOLARBOT_CHANNEL_RATE_PER_MINUTE": "0",
    }
    user_rate = texts.LIMIT_USER_RATE.split("{")[0]
    async with start_slack_rig(tmp_path, slack_fake, environ=environ) as rig:
        acks = [ack_text((await rig.command("help", name=f"h{n}"))[1]) for n in range(25)]
        assert sum(1 for a in acks if "/solar" in a and not a.startswith(user_rate)) == 3
        assert sum(1 for a in acks if a.startswith(user_rate)) == 1
        assert sum(1 for a in acks if not a) == 21  # the rest are acked in silence
        for word in ("status", "prompt", "length", "resume", "forget"):
            answer = ack_text((await rig.command(word, name=f"w-{word}"))[1])
            assert answer == ""  # still refused, told already
        assert not any(r["_name"].startswith("w-") for r in slack_fake.responses)

        # Bare mentions get a hint: a post like any other, so limited too (Dave's burst of 3).
        for n in range(8):
            event = mention("", ts=f"1690004500.{n:06d}")
            event["user"] = "U0DAVE"
            await rig.event(event)
        hints = [m for m in slack_fake.messages.values() if m.text == texts.SLACK_EMPTY_MENTION]
        assert len(hints) == 3
        [dave_told] = slack_fake.ephemerals
        assert dave_told["user"] == "U0DAVE" and dave_told["text"].startswith(user_rate)
        slack_fake.ephemerals.clear()

        for n in range(10):
            event = mention(f"spam line {n}", ts=f"1690005000.{n:06d}")
            event["user"] = "U0BOB"
            await rig.event(event)
        for n in range(6):
            await rig.command(f"spam question {n}", user="U0CAROL", name=f"q{n}")
        await rig.until(lambda: rig.jobs_done(6))
        await rig.until(
            lambda: sum(1 for r in slack_fake.responses if r["_name"].startswith("q")) >= 1
        )
        await asyncio.sleep(0.3)

        [bob_told] = slack_fake.ephemerals
        assert bob_told["user"] == "U0BOB" and bob_told["text"].startswith(user_rate)
        assert bob_told["thread_ts"] == "1690005000.000003"  # in the thread of the refused one
        carol_told = [r for r in slack_fake.responses if r["_name"].startswith("q")]
        assert len(carol_told) == 1 and carol_told[0]["response_type"] == "ephemeral"
        assert carol_told[0]["text"].startswith(user_rate)
        public = [m.text for m in slack_fake.messages.values() if not m.deleted]
        assert not any(user_rate in text for text in public)
        # What stays in the channel: the answers to the bursts, nothing of the refused messages.
        assert sorted(t for t in public if "spam" in t) == sorted(
            [f"You said: Bob: spam line {n}" for n in range(3)]
            + [t for t in public if t.startswith("<@U0CAROL> asked: spam question")]
        )
        asked = [t for t in public if t.startswith("<@U0CAROL> asked:")]
        assert len(asked) == 3 and all("You said" in t for t in asked)


# ---------------------------------------- 18: feedback takes the allow-lists of messages


def votes(repository: Repository, job_id: int) -> set[tuple[str, str]]:
    return {(f.user_id, f.rating.value) for f in repository.feedback_for(job_id)}


async def test_discord_feedback_from_accounts_the_bot_ignores_is_not_stored(
    discord_fake: FakeDiscord, sqlite_url: str
) -> None:
    """Answers given in #general, its thread and #random; then the operator narrows the bot to
    #general and the members role. 👍/👎 from another bot, from a member without the role, and
    on the answer in #random are dropped; a member's, in #general and its thread, are kept."""
    rig = await start_rig(discord_fake, sqlite_url)
    try:
        for channel in (GENERAL, THREAD, RANDOM):
            await discord_fake.user_message(
                channel, f"{MENTION} q{channel}", mentions=(BOT_ID,), roles=(MEMBER_ROLE,)
            )
        await rig.until(lambda: rig.jobs_done(3))
    finally:
        await rig.stop()
        rig.repository.close()
    rig = await start_rig(
        discord_fake,
        sqlite_url,
        allowed_channels=frozenset({GENERAL}),
        allowed_roles=frozenset({MEMBER_ROLE}),
    )
    try:
        jobs = {job.reply_text: job.id for job in rig.repository.jobs()}
        answers = {
            channel: discord_fake.bot_messages(channel)[-1] for channel in (GENERAL, THREAD, RANDOM)
        }
        ignored = [
            (GENERAL, 601, "👍", {"bot": True, "roles": (MEMBER_ROLE,)}),
            (THREAD, 602, "👎", {"bot": True, "roles": (MEMBER_ROLE,)}),
            (GENERAL, 603, "👎", {"roles": ()}),
            (THREAD, 604, "👍", {"roles": (ADMIN_ROLE,)}),
            (RANDOM, 605, "👍", {"roles": (MEMBER_ROLE,)}),
        ]
        for channel, user, emoji, who in ignored:
            await discord_fake.user_reaction(
                int(answers[channel]["id"]),
                emoji,
                user_id=user,
                **who,  # type: ignore[arg-type]
            )
        for channel in (GENERAL, THREAD):
            await discord_fake.user_reaction(
                int(answers[channel]["id"]), "👍", user_id=700, roles=(MEMBER_ROLE,)
            )
        by_channel = {
            channel: jobs[answers[channel]["content"]] for channel in (GENERAL, THREAD, RANDOM)
        }
        await rig.until(
            lambda: all(votes(rig.repository, by_channel[c]) for c in (GENERAL, THREAD))
        )
        await asyncio.sleep(0.3)  # the ignored reactions were dispatched first
        assert votes(rig.repository, by_channel[GENERAL]) == {("700", "up")}
        assert votes(rig.repository, by_channel[THREAD]) == {("700", "up")}
        assert votes(rig.repository, by_channel[RANDOM]) == set()
    finally:
        await rig.stop()
        rig.repository.close()


async def test_slack_feedback_from_bots_and_apps_is_not_stored(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    slack_fake.bot_users.update({"U0OTHERBOT", "U0WORKFLOW"})
    async with start_slack_rig(tmp_path, slack_fake) as rig:
        await rig.event(mention("rate me", ts="1690006000.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = slack_fake.thread("C0GENERAL", "1690006000.000001")
        [job] = rig.repository.jobs()
        for user, name in (("U0OTHERBOT", "+1"), ("U0WORKFLOW", "-1"), ("USLACKBOT", "+1")):
            await rig.event(slack_reaction(name, answer.ts, user=user))
        await rig.event(slack_reaction("thumbsup", answer.ts, user="U0BOB"))
        assert votes(rig.repository, job.id) == {("U0BOB", "up")}
        # Asked once per user, not once per reaction.
        await rig.event(slack_reaction("-1", answer.ts, user="U0OTHERBOT"))
        looked_up = [c.params.get("user") for c in slack_fake.calls_to("users.info")]
        assert looked_up.count("U0OTHERBOT") == 1
        assert votes(rig.repository, job.id) == {("U0BOB", "up")}


# ------------------------------------------- 19: a channel prompt is measured in tokens


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=600),
    context_window=st.integers(700, 4096),
    max_new_tokens=st.integers(1, 600),
)
# The notice did not fit the room an accepted prompt left: the question was refused, not cut.
@example(prompt="000000", context_window=700, max_new_tokens=597)
def test_the_room_a_prompt_leaves_is_exactly_the_question_that_fits(
    prompt: str, context_window: int, max_new_tokens: int
) -> None:
    """With the exact character-level tokenizer: a question of ``room`` tokens is built whole
    with that system prompt, one token more is truncated; where the prompt leaves enough room to
    be accepted, a longer question is always cut with its notice, never refused."""
    tokenizer = FakeTokenizer()
    gauge = PromptGauge()
    gauge.attach(tokenizer, context_window=context_window, max_new_tokens=max_new_tokens)
    room = gauge.measure(prompt)
    assert room is not None
    budget = context_window - max_new_tokens
    marker = len(tokenizer.encode("?" + TRUNCATION_MARKER, add_bos=False))
    assert room.minimum == max(min(MIN_ROOM_TOKENS, budget // 2), marker)
    builder = PromptBuilder(tokenizer, context_window=context_window, max_new_tokens=max_new_tokens)
    if room.room >= 1:
        fits = builder.build(
            system_prompt=prompt, history=[Turn(role="user", text="q" * room.room)]
        )
        assert not fits.newest_truncated and fits.prompt_tokens == budget
    over = [Turn(role="user", text="q" * (max(room.room, 0) + 1))]
    if room.enough:
        assert builder.build(system_prompt=prompt, history=over).newest_truncated
    else:  # the prompt command refuses such a prompt; a question may not fit at all
        with contextlib.suppress(PromptTooLongError):
            assert builder.build(system_prompt=prompt, history=over).newest_truncated


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.text(min_size=1, max_size=300), question=st.text(min_size=1, max_size=300))
def test_with_solars_tokenizer_a_question_within_the_room_is_never_cut(
    tiny_tokenizer: Any, prompt: str, question: str
) -> None:
    """SOLAR's real tokenizer (merges across turn borders): whatever the prompt and the question,
    the builder keeps the question whole exactly when its tokens fit the room measured."""
    window, new = 900, 100
    gauge = PromptGauge()
    gauge.attach(tiny_tokenizer, context_window=window, max_new_tokens=new)
    room = gauge.measure(prompt)
    assert room is not None
    builder = PromptBuilder(tiny_tokenizer, context_window=window, max_new_tokens=new)
    empty = [{"role": "system", "content": prompt}, {"role": "user", "content": ""}]
    asked = [{"role": "system", "content": prompt}, {"role": "user", "content": question}]

    def tokens(messages: list[dict[str, str]]) -> int:
        text = tiny_tokenizer.render_chat(messages, add_generation_prompt=True)
        return len(tiny_tokenizer.encode(text, add_bos=True))

    question_tokens = tokens(asked) - tokens(empty)
    try:
        built = builder.build(system_prompt=prompt, history=[Turn(role="user", text=question)])
    except PromptTooLongError:
        assert room.room < 1
        return
    assert built.newest_truncated == (question_tokens > room.room)


async def test_an_admins_prompt_that_leaves_no_room_is_refused_and_the_room_is_said(
    tmp_path: Path, slack_fake: FakeSlack
) -> None:
    """Through Slack, with the service's wiring (the engine's tokenizer once the model is
    loaded): the 3,960-character prompt of the report is refused, a 2,000-character one is
    accepted with its room stated, and a question that fills that room is answered whole."""
    async with start_slack_rig(tmp_path, slack_fake) as rig:
        budget = 4096 - rig.service.settings.max_new_tokens  # the fake engine: 1 token a char
        huge = "Be thorough. " * 304  # 3,952 characters
        refused = await say(rig, f"prompt {huge}", user=ADMIN, name="p1")
        assert refused.startswith("That system prompt is too long for the model")
        assert "1,024 are needed" in refused
        assert slack_settings(rig)[0] is None  # unchanged
        prompt = "You answer questions about rivers. " * 57  # 1,995 characters
        accepted = await say(rig, f"prompt {prompt}", user=ADMIN, name="p2")
        room = budget - len(
            FakeTokenizer().encode(
                render_solar_chat(
                    [
                        {"role": "system", "content": prompt.strip()},
                        {"role": "user", "content": ""},
                    ],
                    add_generation_prompt=True,
                ),
                add_bos=True,
            )
        )
        assert f"leaves {room:,} tokens for the conversation and the question" in accepted
        assert slack_settings(rig)[0] == prompt.strip()
        question = "x" * (room - len("Alice: "))
        await rig.event(mention(question, ts="1690007000.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [job] = rig.repository.jobs()
        assert job.prompt_tokens == budget  # the whole budget, and the question whole:
        assert TRUNCATION_MARKER not in rig.engine.prompts[-1]
        assert rig.engine.prompts[-1].endswith(f"Alice: {question}\n\n### Assistant:\n")


async def test_an_ingress_without_an_engine_measures_prompts_with_the_tokenizer_alone(
    tmp_path: Path, slack_fake: FakeSlack, tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    """``--role adapters``: no engine, no weights loaded, yet the ``prompt`` command counts
    SOLAR's real tokens (the tokenizer files of the model folder)."""
    environ = {
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_ENGINE": "local",
        "SOLARBOT_MODEL": str(tiny_model_dir),
        "SOLARBOT_OFFLINE": "true",
    }
    service_settings = load_settings(environ=environ)
    repository = Repository.open(service_settings.resolved_database_url())
    adapter = SlackAdapter(
        SlackOptions(
            bot_token=SLACK_BOT_TOKEN,
            signing_secret=SLACK_SIGNING_SECRET,
            host="127.0.0.1",
            port=0,
            api_url=slack_fake.api_url,
            admin_users=frozenset({ADMIN}),
        )
    )
    service = Service(
        settings=service_settings,
        repository=repository,
        engine=None,
        adapters=[adapter],
        run_worker=False,
    )
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(30):
            while not service.intake.prompt_gauge.ready:
                assert not task.done()
                await asyncio.sleep(0.05)
        measured = service.intake.prompt_gauge.measure("Be brief.")
        rendered = "### System:\nBe brief.\n\n### User:\n\n\n### Assistant:\n"
        assert measured is not None and 0 < measured.prompt_tokens < 10
        assert measured.room == 4096 - 512 - len(tiny_tokenizer.encode(rendered, add_bos=True))
        assert service.engine is None  # no weights were loaded for it
    finally:
        service.stopping.set()
        async with asyncio.timeout(10):
            await task
        repository.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    system=st.text(max_size=200),
    turns=st.lists(st.text(max_size=200), min_size=1, max_size=4),
    generation_prompt=st.booleans(),
)
def test_the_tokenizer_from_files_alone_gives_the_engines_ids(
    tiny_model_dir: Path,
    tiny_tokenizer: Any,
    system: str,
    turns: list[str],
    generation_prompt: bool,
) -> None:
    """What an ingress without an engine measures equals what the worker's builder counts:
    same rendered chat, same ids (SOLAR's tokenizer, any text)."""
    light = file_tokenizer(tiny_model_dir)
    messages = [{"role": "system", "content": system}] + [
        {"role": "user" if n % 2 == 0 else "assistant", "content": text}
        for n, text in enumerate(turns)
    ]
    rendered = tiny_tokenizer.render_chat(messages, add_generation_prompt=generation_prompt)
    assert light.render_chat(messages, add_generation_prompt=generation_prompt) == rendered
    for add_bos in (True, False):
        assert light.encode(rendered, add_bos=add_bos) == tiny_tokenizer.encode(
            rendered, add_bos=add_bos
        )


_FILE_TOKENIZERS: dict[Path, FileTokenizer] = {}


def file_tokenizer(folder: Path) -> FileTokenizer:
    if folder not in _FILE_TOKENIZERS:
        _FILE_TOKENIZERS[folder] = FileTokenizer(folder)
    return _FILE_TOKENIZERS[folder]


def test_loading_the_tokenizer_alone_imports_neither_torch_nor_transformers(
    tiny_model_dir: Path,
) -> None:
    script = (
        "import sys; from bot.prompt_room import load_tokenizer; "
        f"tokenizer, window = load_tokenizer({str(tiny_model_dir)!r}, offline=True, "
        "context_window=None); "
        "print(window, tokenizer.encode('Hello world', add_bos=True), "
        "'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4096", "[1,", "22557,", "1526]", "False", "False"]


# -------------------------------------------------------- the refusal window, the migration


@settings(max_examples=80, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            st.sampled_from(["user_rate", "too_long"]),
            st.sampled_from([0.0, 1.0, 30.0, 59.0, 61.0, 200.0]),
            st.sampled_from([None, 10.0, 120.0]),
        ),
        max_size=25,
    ),
    window=st.sampled_from([0.0, 60.0]),
)
def test_a_refusal_is_told_once_per_user_reason_and_window(
    events: list[tuple[str, str, float, float | None]], window: float
) -> None:
    now = [0.0]
    limits = Limits(LimitSettings(refusal_notice_seconds=window), clock=lambda: now[0])
    quiet_until: dict[tuple[str, str], float] = {}
    for user, reason, gap, retry_after in events:
        now[0] += gap
        refusal = limits.first_notice(
            Refusal(reason=reason, notice="n", retry_after=retry_after),
            platform="p",
            workspace="w",
            author_id=user,
        )
        expected_quiet = now[0] < quiet_until.get((user, reason), -1.0)
        assert refusal.quiet == expected_quiet
        if not expected_quiet:
            quiet_until[(user, reason)] = now[0] + max(window, retry_after or 0.0)


def test_migration_0009_adds_the_ping_table_and_goes_down_keeping_the_rest(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        key = ConversationKey(platform="slack", workspace="T1", channel="C1")
        asked = Incoming(
            platform="slack",
            workspace="T1",
            channel="C1",
            author_id="U1",
            text="hi",
            message_id="1",
        )
        assert repository.enqueue(asked) is not None
        ping = {"requester": "U1", "cooldown_seconds": 60, "workspace_cap": 5, "window_seconds": 60}
        assert repository.claim_handoff_ping(key, **ping) is None  # type: ignore[arg-type]
        assert repository.claim_handoff_ping(key, **ping) == "recent"  # type: ignore[arg-type]

        database.downgrade(engine, "0008")
        assert "handoff_pings" not in inspect(engine).get_table_names()
        assert len(repository.jobs()) == 1

        database.upgrade(engine)
        assert database.current_revision(engine) == database.head_revision()
        assert repository.claim_handoff_ping(key, **ping) is None  # type: ignore[arg-type]
        with engine.connect() as connection:
            [requester] = connection.execute(text("SELECT requester FROM handoff_pings")).scalars()
        assert requester != "U1" and len(requester) == 64  # a digest, not the id
    finally:
        engine.dispose()


async def test_when_the_ping_limits_cannot_be_checked_the_asker_still_gets_a_human(
    discord_fake: FakeDiscord, database_url: str
) -> None:
    """The database refuses to record a ping: the support role is pinged all the same (rather one
    ping too many than a request nobody sees) and the conversation is handed over."""
    rig = await start_rig(
        discord_fake,
        database_url,
        handoff_keywords=("talk to a human",),
        support_role=ADMIN_ROLE,
        limits=Limits(LimitSettings()),
    )
    try:
        with refusing_inserts(rig.repository, "handoff_pings"):
            await discord_fake.user_message(
                GENERAL, f"{MENTION} talk to a human", mentions=(BOT_ID,)
            )
            await rig.until(lambda: len(rig.replies(GENERAL)) == 1)
        assert len(role_pings(rig, GENERAL)) == 1
        assert rig.repository.handoffs_in_channel(
            platform="discord", workspace=str(GUILD), channel=str(GENERAL)
        )
    finally:
        await rig.stop()
        rig.repository.close()


ID_CHARS = st.sampled_from("ab:%c3A5")  # what spelled keys alike: ":" and "%"


@settings(max_examples=200, deadline=None)
@example(first=("a:b", "c"), second=("a", "b:c"))
@example(first=("a%3Ab", "c"), second=("a:b", "c"))
@given(
    first=st.tuples(
        st.text(ID_CHARS, min_size=1, max_size=6), st.text(ID_CHARS, min_size=1, max_size=6)
    ),
    second=st.tuples(
        st.text(ID_CHARS, min_size=1, max_size=6), st.text(ID_CHARS, min_size=1, max_size=6)
    ),
)
def test_people_and_channels_never_share_a_rate_bucket_by_their_spelling(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    """Buckets are keyed unambiguously (``bot.dedupe``): workspace ``a:b`` + user ``c`` and
    workspace ``a`` + user ``b:c`` are two people, each with a burst of their own."""
    if first == second:
        return
    limits = Limits(
        LimitSettings(user_rate_per_minute=1, user_burst=1, channel_rate_per_minute=0),
        clock=lambda: 0.0,
    )

    def asks(workspace: str, author: str) -> bool:
        incoming = Incoming(
            platform="p", workspace=workspace, channel="c", author_id=author, text="hi",
            message_id="m",
        )  # fmt: skip
        return not isinstance(limits.admit(incoming), Refusal)

    assert asks(*first)
    assert asks(*second)  # a different person: their own bucket, still full
    assert not asks(*first)  # the same person again: the burst of 1 is spent
