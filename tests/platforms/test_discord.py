"""The Discord adapter end to end: the real discord.py client against tests/support/discord_fake.py, the real
intake, SQLite queue and worker, and the shipped FakeEngine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from collections.abc import AsyncIterator

import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord import DiscordAdapter, DiscordOptions
from bot import texts
from bot.conversation import neutralise
from bot.errors import ConfigError
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.splitting import split_message, truncate_at_word
from storage.repository import Repository
from tests.support.discord_fake import BOT_ID, FakeDiscord
from tests.support.discord_rig import (
    ADMIN_ROLE,
    BOT_ROLE,
    DM,
    ELSEWHERE,
    FAST,
    GENERAL,
    GUILD,
    MEMBER_ROLE,
    MENTION,
    OTHER_GUILD,
    RANDOM,
    THREAD,
    Rig,
    command,
    home_discord,
    start_rig,
)

MARKUP = re.compile(r"<(@[!&]?|#)\d+>|<a?:\w+:\d+>")  # Discord's mentions and custom emoji


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with home_discord(monkeypatch) as fake:
        yield fake


@pytest.fixture
async def rig(fake: FakeDiscord, sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start_rig(fake, sqlite_url, engine=FakeEngine(delay_per_chunk=0.01))
    yield rig
    await rig.stop()
    rig.repository.close()


def strip_added_fences(chunks: list[str]) -> str:
    """Join chunks, removing the fence close/reopen lines added at chunk borders (for code split
    at line ends, which is where the splitter cuts short code lines)."""
    out: list[str] = []
    for index, chunk in enumerate(chunks):
        if index > 0 and out[-1].endswith("\n```") and chunk.startswith("```"):
            out[-1] = out[-1].removesuffix("```")
            chunk = chunk.split("\n", 1)[1]
        out.append(chunk)
    return "".join(out)


# ---------------------------------------------------------------------------- the basic path


async def test_a_mention_gets_typing_a_placeholder_streamed_edits_and_the_final_text(
    rig: Rig,
) -> None:
    answer = "Hello there! " + " ".join(f"word{n}" for n in range(40))
    rig.engine._replies = [answer]
    asked = await rig.fake.user_message(GENERAL, f"{MENTION} what is SOLAR?", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))

    (reply,) = rig.fake.bot_messages(GENERAL)
    assert reply["content"] == answer
    # It answers the question, without pinging anyone.
    assert reply["message_reference"]["message_id"] == asked["id"]
    assert reply["allowed_mentions"] == {"parse": []}  # replied_user absent: no ping
    calls = [
        (c.method, c.path)
        for c in rig.fake.calls
        if c.path.startswith(f"/channels/{GENERAL}") and c.method != "GET"
    ]
    assert calls[0] == ("POST", f"/channels/{GENERAL}/typing")
    assert calls[1] == ("POST", f"/channels/{GENERAL}/messages")
    shown = rig.fake.edits[int(reply["id"])]
    assert shown[0] == texts.DISCORD_THINKING and shown[-1] == answer
    assert len(shown) >= 3  # placeholder, at least one partial edit, the final text
    assert all(answer.startswith(partial) for partial in shown[1:])
    assert rig.stored(GENERAL) == [("user", "what is SOLAR?"), ("assistant", answer)]
    assert rig.engine.prompts[0].endswith("### User:\nAna: what is SOLAR?\n\n### Assistant:\n")
    job = rig.repository.jobs()[0]
    assert job.reply_message_ids == (reply["id"],) and job.dedupe_key == f"discord:{asked['id']}"


async def test_a_reply_without_mention_to_the_bots_message_is_answered(rig: Rig) -> None:
    await rig.fake.user_message(GENERAL, f"{MENTION} first", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    (bot_reply,) = rig.fake.bot_messages(GENERAL)
    await rig.fake.user_message(GENERAL, "and a follow-up", reply_to=int(bot_reply["id"]))
    await rig.until(lambda: rig.jobs_done(2))
    assert rig.replies(GENERAL) == ["You said: Ana: first", "You said: Ana: and a follow-up"]
    assert [t for _, t in rig.stored(GENERAL)][-2:] == [
        "and a follow-up",
        "You said: Ana: and a follow-up",
    ]


async def test_mentions_become_names_and_attachments_and_stickers_are_noted(rig: Rig) -> None:
    await rig.fake.user_message(
        GENERAL,
        f"{MENTION}  ask <@501> about <#{RANDOM}> and <@&{MEMBER_ROLE}> <:party:123>",
        mentions=(BOT_ID, 501),
        mention_roles=(MEMBER_ROLE,),
        attachments=(("trace.log", "text/plain"), ("shot.png", "image/png")),
        stickers=("Wave",),
    )
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.stored(GENERAL)[0][1] == (
        "ask @User501 about #random and @members :party:\n"
        "[attachment: trace.log (text/plain)]\n[attachment: shot.png (image/png)]\n"
        "[sticker: Wave]"
    )


async def test_the_bots_own_mention_goes_with_its_whitespace_and_nothing_else_changes(
    rig: Rig,
) -> None:
    sent_and_stored = [
        (f"{MENTION}\n    def f():\n\treturn 1  \n", "    def f():\n\treturn 1  \n"),
        (f"  {MENTION}   \t```py\nx  =  1\n```", "```py\nx  =  1\n```"),
        (f"thanks  {MENTION}!  and  bye ", "thanks!  and  bye "),
        (f"<@!{BOT_ID}>  <@&{BOT_ROLE}>\r\n\n\nthree\n\n\nbreaks", "\n\nthree\n\n\nbreaks"),
        (f"{MENTION} a  <@501>   b", "a  @User501   b"),
    ]
    for sent, _ in sent_and_stored:
        await rig.fake.user_message(
            GENERAL, sent, mentions=(BOT_ID, 501), mention_roles=(BOT_ROLE,)
        )
    await rig.until(lambda: rig.jobs_done(len(sent_and_stored)))
    stored = [text for role, text in rig.stored(GENERAL) if role == "user"]
    assert stored == [text for _, text in sent_and_stored]
    # The model reads the same text (after the author's name).
    assert "Ana:     def f():\n\treturn 1  \n" in rig.engine.prompts[0]


# Text as users paste it: whitespace of every kind, code fences, any script; no Discord markup.
# Not NUL: no database column can hold it, so such a message is refused at intake (not stored,
# logged at INFO; tests/platforms/test_discord_ingress.py), never stored altered.
PLAIN_TEXT = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=300,
    )
    | st.text(alphabet=" \t\n\r`{}()<>=@#:!*_~-abc\u00a0\u3000é👍", max_size=300)
).filter(
    lambda text: text.strip() != "" and not text.strip().startswith("!") and not MARKUP.search(text)
)


@settings(
    max_examples=10,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(texts=st.lists(PLAIN_TEXT, min_size=1, max_size=12))
def test_what_users_write_is_stored_and_read_by_the_model_byte_for_byte(texts: list[str]) -> None:
    """Through the real discord.py client: after the bot's mention (and its line break, when it
    stands on its own line), everything a user writes is stored and prompted exactly as sent."""

    async def scenario(url: str) -> None:
        fake = FakeDiscord()
        fake.add_guild(GUILD, "home")
        fake.add_channel(GUILD, GENERAL, "general")
        await fake.start()
        with pytest.MonkeyPatch.context() as monkeypatch:
            fake.point_discord_py_here(monkeypatch)
            rig = await start_rig(fake, url)
            try:
                for index, text in enumerate(texts):
                    # Mention on its own line, or leading the first line of a text that starts
                    # with no whitespace of its own.
                    own_line = index % 2 == 0 or text[0].isspace()
                    sent = f"{MENTION}\n{text}" if own_line else f"{MENTION} {text}"
                    await fake.user_message(GENERAL, sent, mentions=(BOT_ID,))
                await rig.until(lambda: rig.jobs_done(len(texts)), within=60)
                stored = [text for role, text in rig.stored(GENERAL) if role == "user"]
                assert stored == texts
                # The model reads it too (role headers defused, as for every platform).
                for text in texts:
                    assert any(f"Ana: {neutralise(text)}" in p for p in rig.engine.prompts)
            finally:
                await rig.stop()
                rig.repository.close()
                await fake.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(f"sqlite:///{folder}/solarbot.db"))


# ---------------------------------------------------------------------------- long replies


async def test_a_long_reply_with_code_arrives_in_balanced_chunks_and_nothing_is_lost(
    rig: Rig,
) -> None:
    code = "".join(f"    total += compute_value({n}, factor={n % 7})\n" for n in range(90))
    answer = (
        "Here is the script you asked for. " * 12
        + "\n\n```python\ndef main():\n    total = 0\n"
        + code
        + "    return total\n```\n\n"
        + "It adds everything up. " * 40
    )
    assert 4800 < len(answer) < 5600
    rig.engine._replies = [answer]
    rig.engine._delay = 0.001  # ~900 words: keep the stream quick but still spread over edits
    await rig.fake.user_message(GENERAL, f"{MENTION} write it", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))

    chunks = rig.replies(GENERAL)
    assert len(chunks) >= 3
    assert all(len(chunk) <= 2000 for chunk in chunks)
    assert all(chunk.count("```") % 2 == 0 for chunk in chunks)
    assert chunks == split_message(answer, limit=2000)
    assert strip_added_fences(chunks) == answer
    assert not [c for c in rig.fake.calls if c.status == 400]  # never sent anything over 2000
    # Streamed: the first message grew through several edits before it was finished and the
    # follow-ups were posted as the text passed each limit.
    first = rig.fake.bot_messages(GENERAL)[0]
    assert len(rig.fake.edits[int(first["id"])]) >= 3
    assert rig.stored(GENERAL)[-1] == ("assistant", answer)
    assert rig.repository.jobs()[0].reply_message_ids == tuple(
        m["id"] for m in rig.fake.bot_messages(GENERAL)
    )


# ---------------------------------------------------------------------------- exactly once


async def test_a_replayed_message_create_gets_one_reply(rig: Rig) -> None:
    asked = await rig.fake.user_message(GENERAL, f"{MENTION} once please", mentions=(BOT_ID,))
    await rig.fake.dispatch_message(asked)  # the gateway replays it (resume, reconnect)
    await rig.until(lambda: rig.jobs_done(1))
    await rig.fake.dispatch_message(asked)  # and again after the reply
    await asyncio.sleep(0.3)
    assert rig.replies(GENERAL) == ["You said: Ana: once please"]
    assert len(rig.repository.jobs()) == 1
    assert rig.stored(GENERAL) == [
        ("user", "once please"),
        ("assistant", "You said: Ana: once please"),
    ]


async def test_a_crash_mid_generation_still_gives_one_complete_reply(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    answer = " ".join(f"token{n}" for n in range(60))
    first = await start_rig(
        fake,
        sqlite_url,
        engine=FakeEngine(replies=[answer], delay_per_chunk=0.03),
        lease_seconds=1.0,
    )
    # The process dies: nothing is handed back, the lease simply runs out.
    first.repository.release = lambda job: False  # type: ignore[method-assign]
    await fake.user_message(GENERAL, f"{MENTION} long one", mentions=(BOT_ID,))
    await first.until(lambda: len(fake.edits.get(_first_id(fake), [])) >= 2)
    await first.stop(drain=0)
    (partial,) = fake.bot_messages(GENERAL)
    assert partial["content"] != answer and answer.startswith(partial["content"])
    await asyncio.sleep(1.1)  # the dead worker's lease expires

    second = await start_rig(fake, sqlite_url, engine=FakeEngine(replies=[answer]))
    try:
        await second.until(lambda: second.jobs_done(1))
        assert second.replies(GENERAL) == [answer]  # the same message, finished
        assert len(fake.rest("POST", rf"/channels/{GENERAL}/messages$")) == 1
        (job,) = second.repository.jobs()
        assert job.attempts == 2 and job.reply_message_ids == (partial["id"],)
        assert second.stored(GENERAL) == [("user", "long one"), ("assistant", answer)]
    finally:
        await second.stop()
        second.repository.close()
        first.repository.close()


def _first_id(fake: FakeDiscord) -> int:
    messages = fake.bot_messages(GENERAL)
    return int(messages[0]["id"]) if messages else 0


async def test_a_429_on_the_first_post_is_retried_and_the_reply_arrives_once(rig: Rig) -> None:
    rig.fake.fail_next("POST", rf"/channels/{GENERAL}/messages$", status=429, retry_after=0.1)
    await rig.fake.user_message(GENERAL, f"{MENTION} busy?", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    posts = rig.fake.rest("POST", rf"/channels/{GENERAL}/messages$")
    assert [c.status for c in posts] == [429, 200]
    assert rig.replies(GENERAL) == ["You said: Ana: busy?"]


async def test_a_failed_delivery_goes_back_to_the_worker_and_nothing_is_lost(rig: Rig) -> None:
    # discord.py gives up after five 429s in a row: the worker retries the job later.
    rig.fake.fail_next(
        "POST", rf"/channels/{GENERAL}/messages$", status=429, retry_after=0.01, count=5
    )
    await rig.fake.user_message(GENERAL, f"{MENTION} persistent", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.replies(GENERAL) == ["You said: Ana: persistent"]
    (job,) = rig.repository.jobs()
    assert job.attempts == 2


async def test_a_5xx_on_an_edit_is_retried_by_the_client_and_the_text_completes(rig: Rig) -> None:
    rig.fake.fail_next("PATCH", rf"/channels/{GENERAL}/messages/\d+$", status=502)
    await rig.fake.user_message(GENERAL, f"{MENTION} flaky edge", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    assert [c.status for c in rig.fake.rest("PATCH", rf"/channels/{GENERAL}/")][:2] == [502, 200]
    assert rig.replies(GENERAL) == ["You said: Ana: flaky edge"]


async def test_an_engine_failure_is_retried_into_the_same_message_and_typing_stops(
    rig: Rig,
) -> None:
    rig.engine.fail_next()
    await rig.fake.user_message(GENERAL, f"{MENTION} try twice", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.replies(GENERAL) == ["You said: Ana: try twice"]  # the first placeholder, reused
    assert len(rig.fake.rest("POST", rf"/channels/{GENERAL}/messages$")) == 1
    assert rig.repository.jobs()[0].attempts == 2
    await asyncio.sleep(0.05)
    typing = [t for t in rig.adapter._tasks if t.get_name().startswith("discord-typing")]
    assert typing == []  # the abandoned attempt's typing was stopped when the retry began


# ---------------------------------------------------------------------------- conversations


async def test_channels_and_threads_keep_separate_histories(rig: Rig) -> None:
    for channel, text in [(GENERAL, "in general"), (RANDOM, "in random"), (THREAD, "in thread")]:
        await rig.fake.user_message(channel, f"{MENTION} {text}", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(3))
    await rig.fake.user_message(THREAD, f"{MENTION} again", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(4))

    assert rig.replies(GENERAL) == ["You said: Ana: in general"]
    assert rig.replies(RANDOM) == ["You said: Ana: in random"]
    assert rig.replies(THREAD) == ["You said: Ana: in thread", "You said: Ana: again"]
    assert rig.stored(GENERAL) == [
        ("user", "in general"),
        ("assistant", "You said: Ana: in general"),
    ]
    assert rig.stored(RANDOM) == [("user", "in random"), ("assistant", "You said: Ana: in random")]
    # The thread is its own conversation under its channel (which gives it the channel's settings).
    assert [t for _, t in rig.stored(GENERAL, thread=THREAD)] == [
        "in thread",
        "You said: Ana: in thread",
        "again",
        "You said: Ana: again",
    ]
    last = rig.engine.prompts[-1]
    assert "in thread" in last and "in general" not in last and "in random" not in last


async def test_in_a_thread_started_on_the_bots_message_every_message_is_answered(
    rig: Rig,
) -> None:
    await rig.fake.user_message(GENERAL, f"{MENTION} start", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    (bot_reply,) = rig.fake.bot_messages(GENERAL)
    thread_id = int(bot_reply["id"])  # "Create Thread" on a message: the thread gets its id
    rig.fake.add_thread(GUILD, GENERAL, thread_id, "follow-up")
    await rig.fake.user_message(thread_id, "no mention needed here")
    await rig.until(lambda: rig.jobs_done(2))
    assert rig.replies(thread_id) == ["You said: Ana: no mention needed here"]
    # In somebody else's thread, plain messages are not for the bot.
    await rig.fake.user_message(THREAD, "just chatting")
    await asyncio.sleep(0.3)
    assert rig.replies(THREAD) == [] and len(rig.repository.jobs()) == 2


async def test_bots_itself_and_unaddressed_messages_are_ignored(rig: Rig) -> None:
    await rig.fake.user_message(GENERAL, f"{MENTION} from a bot", mentions=(BOT_ID,), bot=True)
    await rig.fake.user_message(GENERAL, "nobody asked the bot")
    await rig.fake.user_message(GENERAL, f"{MENTION}", mentions=(BOT_ID,), author_id=BOT_ID)
    await rig.fake.user_message(GENERAL, f"{MENTION} real question", mentions=(BOT_ID,))
    await rig.until(lambda: rig.jobs_done(1))
    await asyncio.sleep(0.2)
    # Its own reply came back over the gateway too (as on Discord) and was ignored.
    assert rig.replies(GENERAL) == ["You said: Ana: real question"]
    assert len(rig.repository.jobs()) == 1


async def test_a_bare_mention_gets_a_hint_and_nothing_is_queued(rig: Rig) -> None:
    await rig.fake.user_message(GENERAL, f"{MENTION}  ", mentions=(BOT_ID,))
    await rig.until(lambda: bool(rig.replies(GENERAL)))
    assert rig.replies(GENERAL) == [texts.DISCORD_EMPTY_MENTION]
    assert rig.repository.jobs() == []


async def test_dms_are_ignored_unless_switched_on(fake: FakeDiscord, sqlite_url: str) -> None:
    off = await start_rig(fake, sqlite_url)
    try:
        await fake.user_message(DM, "hello in private")
        await asyncio.sleep(0.3)
        assert off.replies(DM) == [] and off.repository.jobs() == []
    finally:
        await off.stop()
        off.repository.close()
    on = await start_rig(fake, sqlite_url, dms=True)
    try:
        await fake.user_message(DM, "hello in private")
        await on.until(lambda: on.jobs_done(1))
        assert on.replies(DM) == ["You said: Ana: hello in private"]
        assert on.stored(DM, guild=0) == [
            ("user", "hello in private"),
            ("assistant", "You said: Ana: hello in private"),
        ]
    finally:
        await on.stop()
        on.repository.close()


async def test_unauthorised_guilds_channels_and_roles_get_no_reply_and_nothing_stored(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(
        fake,
        sqlite_url,
        allowed_guilds=frozenset({GUILD}),
        allowed_channels=frozenset({GENERAL}),
        allowed_roles=frozenset({MEMBER_ROLE}),
        admin_roles=frozenset({ADMIN_ROLE}),
    )
    try:
        ask = {"mentions": (BOT_ID,)}
        await fake.user_message(ELSEWHERE, f"{MENTION} other guild", roles=(MEMBER_ROLE,), **ask)  # type: ignore[arg-type]
        await fake.user_message(RANDOM, f"{MENTION} other channel", roles=(MEMBER_ROLE,), **ask)  # type: ignore[arg-type]
        await fake.user_message(GENERAL, f"{MENTION} no role", **ask)  # type: ignore[arg-type]
        await fake.user_message(GENERAL, f"{MENTION} member", roles=(MEMBER_ROLE,), **ask)  # type: ignore[arg-type]
        await fake.user_message(GENERAL, f"{MENTION} admin", roles=(ADMIN_ROLE,), **ask)  # type: ignore[arg-type]
        await fake.user_message(THREAD, f"{MENTION} thread", roles=(MEMBER_ROLE,), **ask)  # type: ignore[arg-type]
        await rig.until(lambda: rig.jobs_done(3))
        await asyncio.sleep(0.2)
        assert rig.replies(ELSEWHERE) == [] and rig.replies(RANDOM) == []
        assert rig.replies(GENERAL) == ["You said: Ana: member", "You said: Ana: admin"]
        assert rig.replies(THREAD) == ["You said: Ana: thread"]  # allowed through its channel
        assert rig.stored(ELSEWHERE, guild=OTHER_GUILD) == [] and rig.stored(RANDOM) == []
        assert len(rig.repository.jobs()) == 3
        assert not fake.rest("POST", rf"/channels/({ELSEWHERE}|{RANDOM})/")
    finally:
        await rig.stop()
        rig.repository.close()


# ---------------------------------------------------------------------------- queueing


async def test_a_waiting_job_shows_its_queue_position_then_becomes_the_reply(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    engine = FakeEngine(delay_per_chunk=0.02, script=lambda p: "slow answer " * 15)
    rig = await start_rig(fake, sqlite_url, engine=engine, concurrency=1)
    try:
        await fake.user_message(GENERAL, f"{MENTION} first", mentions=(BOT_ID,))
        await fake.user_message(RANDOM, f"{MENTION} second", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(2))
        (waiting,) = fake.bot_messages(RANDOM)
        shown = fake.edits[int(waiting["id"])]
        assert shown[0] == texts.DISCORD_QUEUED.format(position=1)
        assert texts.DISCORD_THINKING in shown and shown[-1] == ("slow answer " * 15).strip() + " "
        assert len(fake.rest("POST", rf"/channels/{RANDOM}/messages$")) == 1
        assert len(fake.rest("POST", rf"/channels/{RANDOM}/typing")) >= 2  # kept fresh
    finally:
        await rig.stop()
        rig.repository.close()


# ---------------------------------------------------------------------------- start-up, egress


async def test_egress_needs_no_gateway(fake: FakeDiscord, sqlite_url: str) -> None:
    """A worker process delivers with REST only: no websocket is opened."""
    repository = Repository.open(sqlite_url)
    ingress = DiscordAdapter(DiscordOptions(token=fake.token, **FAST))
    await ingress.start(Intake(repository))
    await fake.user_message(GENERAL, f"{MENTION} from the gateway", mentions=(BOT_ID,))
    async with asyncio.timeout(10):
        while not repository.jobs():
            await asyncio.sleep(0.01)
    await ingress.stop()
    assert fake.connections == 0

    rig = await start_rig(fake, sqlite_url, ingress=False)
    try:
        await rig.until(lambda: rig.jobs_done(1))
        assert fake.connections == 0 and fake.identifies == 1
        assert rig.replies(GENERAL) == ["You said: Ana: from the gateway"]
    finally:
        await rig.stop()
        repository.close()
        rig.repository.close()


async def test_a_queue_notice_is_removed_when_another_process_answers(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    repository = Repository.open(sqlite_url)
    ingress = DiscordAdapter(DiscordOptions(token=fake.token, **FAST))  # no worker in this process
    await ingress.start(Intake(repository))
    try:
        await fake.user_message(GENERAL, f"{MENTION} first", mentions=(BOT_ID,))
        await fake.user_message(RANDOM, f"{MENTION} second", mentions=(BOT_ID,))
        async with asyncio.timeout(10):
            while not fake.bot_messages(RANDOM):
                await asyncio.sleep(0.01)
        (notice,) = fake.bot_messages(RANDOM)
        assert notice["content"] == texts.DISCORD_QUEUED.format(position=1)

        worker = await start_rig(fake, sqlite_url, ingress=False)  # another process answers
        try:
            await worker.until(lambda: worker.jobs_done(2))
            await worker.until(lambda: int(notice["id"]) in fake.deleted)
            assert worker.replies(RANDOM) == ["You said: Ana: second"]
        finally:
            await worker.stop()
            worker.repository.close()
    finally:
        await ingress.stop()
        repository.close()


async def test_missing_message_content_intent_is_a_clear_start_up_error(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    fake.message_content_enabled = False
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, **FAST))
    try:
        with pytest.raises(ConfigError) as caught:
            await adapter.start(Intake(repository))
        assert "MESSAGE CONTENT INTENT" in str(caught.value)
        assert "Privileged Gateway Intents" in str(caught.value)
    finally:
        await adapter.stop()
        repository.close()


async def test_a_bad_or_missing_token_is_a_clear_error_and_never_logged(
    fake: FakeDiscord, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match="SOLARBOT_DISCORD_TOKEN is not set"):
        DiscordAdapter(DiscordOptions(token="  "))
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(DiscordOptions(token="wrong-secret-token", **FAST))
    try:
        with pytest.raises(ConfigError, match="SOLARBOT_DISCORD_TOKEN: Discord rejected the token"):
            await adapter.start(Intake(repository))
    finally:
        await adapter.stop()
        repository.close()
    assert "wrong-secret-token" not in caplog.text and "wrong-secret-token" not in repr(adapter)
    assert fake.rest("GET", "/users/@me")[0].status == 401


async def test_the_fake_blanks_content_for_a_client_without_the_message_content_intent(
    fake: FakeDiscord,
) -> None:
    """The stand-in behaves like Discord: without the intent only mentions (and DMs) carry text."""
    seen: list[str] = []
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.dm_messages = True
    client = discord.Client(intents=intents, guild_ready_timeout=0.01)
    ready = asyncio.Event()

    @client.event
    async def on_ready() -> None:
        ready.set()

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message.content)

    await client.login(fake.token)
    gateway = asyncio.create_task(client.connect(reconnect=False))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
            await fake.user_message(GENERAL, "secret chatter")
            await fake.user_message(GENERAL, f"{MENTION} visible", mentions=(BOT_ID,))
            await fake.user_message(DM, "a dm")
            while len(seen) < 3:
                await asyncio.sleep(0.01)
        assert seen == ["", f"{MENTION} visible", "a dm"]
    finally:
        await client.close()
        gateway.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gateway


# ---------------------------------------------------------------------------- channel settings


def settings_of(rig: Rig, channel: int = GENERAL) -> tuple[object, ...]:
    config = rig.repository.channel_config(
        platform="discord", workspace=str(GUILD), channel=str(channel)
    )
    return (config.system_prompt, config.enabled, config.max_reply_chars, config.language)


async def test_admin_roles_change_channel_settings_that_threads_inherit(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(fake, sqlite_url, admin_roles=frozenset({MEMBER_ROLE}))
    try:
        # ADMIN_ROLE has Manage Server, but admin roles are configured: only they count.
        for text in ("!prompt Be a pirate.", "!length 30", "!language German", "!off"):
            refusal = await command(rig, GENERAL, text, roles=(ADMIN_ROLE,))
            assert refusal.startswith("Sorry, only admins can use `@solarbot !")
        assert settings_of(rig) == (None, True, None, None)

        admin = (MEMBER_ROLE,)
        assert "now" in await command(rig, GENERAL, "!prompt Be a pirate.", roles=admin)
        assert "30 characters" in await command(rig, GENERAL, "!length 30", roles=admin)
        assert "German" in await command(rig, GENERAL, "!language German", roles=admin)
        assert settings_of(rig) == ("Be a pirate.", True, 30, "German")
        assert "needs a number" in await command(rig, GENERAL, "!length 5", roles=admin)
        assert settings_of(rig)[2] == 30  # an invalid length changed nothing

        # A question in a thread of the channel gets the channel's settings.
        question = "tell me all about the longest rivers of the world"
        await fake.user_message(THREAD, f"{MENTION} {question}", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(1))
        assert rig.engine.prompts[-1].startswith(
            "### System:\nBe a pirate.\n\nAnswer in German.\n\n### User:\n"
        )
        full = f"You said: Ana: {question}"
        [reply] = rig.replies(THREAD)
        assert reply == truncate_at_word(full, 30) and len(reply) <= 30 and reply.endswith("…")
        assert rig.stored(GENERAL, thread=THREAD)[-1] == ("assistant", reply)

        status = await command(rig, THREAD, "!status")
        assert "custom system prompt (12 characters)" in status and "replies on" in status
        assert "at most 30 characters" in status and "**Language:** German" in status

        assert "no length limit" in await command(rig, GENERAL, "!length reset", roles=admin)
        assert settings_of(rig)[2] is None
        assert "Be a pirate." in await command(rig, GENERAL, "!prompt")  # anyone may look
        assert "don't know" in await command(rig, GENERAL, "!frobnicate")
    finally:
        await rig.stop()
        rig.repository.close()


async def test_manage_server_makes_an_admin_when_no_admin_roles_are_set_and_off_means_silence(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(fake, sqlite_url)
    try:
        refusal = await command(rig, GENERAL, "!off", roles=(MEMBER_ROLE,))
        assert "only admins" in refusal and settings_of(rig)[1] is True
        assert "I'm off" in await command(rig, GENERAL, "!off", roles=(ADMIN_ROLE,))
        assert settings_of(rig)[1] is False

        # Switched off: questions, non-admins' commands and an admin's other commands are ignored.
        replies = len(rig.replies(GENERAL))
        await command(rig, GENERAL, "anyone there?", reply_to_wait=False)
        await command(rig, GENERAL, "!status", roles=(MEMBER_ROLE,), reply_to_wait=False)
        await command(rig, GENERAL, "!on", roles=(MEMBER_ROLE,), reply_to_wait=False)
        await command(rig, GENERAL, "!help", roles=(ADMIN_ROLE,), reply_to_wait=False)
        # An admin's status still answers (messages are handled in order: this is a barrier).
        status = await command(rig, GENERAL, "!status", roles=(ADMIN_ROLE,))
        assert "replies off" in status
        assert len(rig.replies(GENERAL)) == replies + 1 and rig.repository.jobs() == []

        assert "on in this channel" in await command(rig, GENERAL, "!on", roles=(ADMIN_ROLE,))
        await fake.user_message(GENERAL, f"{MENTION} back?", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(1))
        assert rig.replies(GENERAL)[-1] == "You said: Ana: back?"
        assert len(rig.engine.requests) == 1  # the question asked while off never reached it
    finally:
        await rig.stop()
        rig.repository.close()


# ---------------------------------------------------------------------------- feedback


def votes(rig: Rig, job_id: int) -> set[tuple[str, str]]:
    return {(f.user_id, f.rating.value) for f in rig.repository.feedback_for(job_id)}


async def test_thumbs_on_a_reply_are_feedback_and_removing_one_removes_it(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    long_reply = "word " * 500  # 2500 characters: two messages
    rig = await start_rig(
        fake, sqlite_url, engine=FakeEngine(replies=["Short answer.", long_reply])
    )
    try:
        question = await fake.user_message(GENERAL, f"{MENTION} first?", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(1))
        await fake.user_message(THREAD, f"{MENTION} second?", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(2))
        first_job, second_job = (job.id for job in rig.repository.jobs())
        [answer] = fake.bot_messages(GENERAL)
        _, part_two = fake.bot_messages(THREAD)

        await fake.user_reaction(int(answer["id"]), "👍", user_id=501)
        await fake.user_reaction(int(answer["id"]), "👎🏽", user_id=502)  # any skin tone
        await fake.user_reaction(int(answer["id"]), "🎉", user_id=503)  # not feedback
        await fake.user_reaction(int(question["id"]), "👎", user_id=504)  # not on a reply
        await fake.user_reaction(int(part_two["id"]), "👎", user_id=505)  # a follow-up part
        await rig.until(
            lambda: len(votes(rig, first_job)) == 2 and len(votes(rig, second_job)) == 1
        )
        assert votes(rig, first_job) == {("501", "up"), ("502", "down")}
        assert votes(rig, second_job) == {("505", "down")}
        [stored] = [f for f in rig.repository.feedback_for(second_job)]
        assert stored.platform_message_id == part_two["id"] and stored.created_at is not None

        await fake.user_reaction(int(answer["id"]), "👍", user_id=501, added=False)
        await rig.until(lambda: votes(rig, first_job) == {("502", "down")})
        await fake.user_reaction(int(part_two["id"]), "👎", user_id=505, added=False)
        await rig.until(lambda: votes(rig, second_job) == set())
        await asyncio.sleep(0.1)
        assert votes(rig, first_job) == {("502", "down")}  # the other reactions stored nothing
    finally:
        await rig.stop()
        rig.repository.close()


# ---------------------------------------------------------------------------- human handoff


async def test_asking_for_a_human_pings_the_support_role_and_silences_the_thread_until_resume(
    fake: FakeDiscord, sqlite_url: str
) -> None:
    rig = await start_rig(
        fake, sqlite_url, handoff_keywords=("talk to a human",), support_role=ADMIN_ROLE
    )
    try:
        await fake.user_message(
            THREAD, f"{MENTION} I want to TALK to a  human!", mentions=(BOT_ID,)
        )
        await rig.until(lambda: len(rig.replies(THREAD)) == 1)
        [notice] = fake.bot_messages(THREAD)
        assert notice["content"].startswith(f"<@&{ADMIN_ROLE}> Someone here asked for a human")
        assert "`@solarbot !resume`" in notice["content"]
        # The support role, and nobody else, is pinged.
        assert [str(r) for r in notice["allowed_mentions"]["roles"]] == [str(ADMIN_ROLE)]
        assert notice["allowed_mentions"]["parse"] == []
        assert rig.engine.requests == []

        await fake.user_message(THREAD, f"{MENTION} hello? anyone?", mentions=(BOT_ID,))
        await fake.user_message(GENERAL, f"{MENTION} still there?", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(1))  # the channel itself is not handed off
        assert rig.replies(GENERAL) == ["You said: Ana: still there?"]
        assert rig.replies(THREAD) == [notice["content"]]
        assert rig.stored(GENERAL, thread=THREAD) == [("user", "I want to TALK to a  human!")]
        status = await command(rig, GENERAL, "!status")
        assert "**Waiting for a human:** 1 conversation(s)" in status

        # Anyone may bring the bot back, from the channel or any of its threads.
        assert "I'm back" in await command(rig, THREAD, "!resume", roles=(MEMBER_ROLE,))
        await fake.user_message(THREAD, f"{MENTION} and now?", mentions=(BOT_ID,))
        await rig.until(lambda: rig.jobs_done(2))
        assert rig.replies(THREAD)[-1] == "You said: Ana: and now?"
        assert "Nothing to resume" in await command(rig, GENERAL, "!resume")
    finally:
        await rig.stop()
        rig.repository.close()
