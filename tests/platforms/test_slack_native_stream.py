"""Slack's native streaming (adapters/slack_native_stream.py) end to end: the real slack-bolt and
slack_sdk against the local fake Slack (chat.startStream / appendStream / stopStream validated like
the real API), the real Service and the shipped FakeEngine; a real ``solarbot worker`` process
SIGKILLed mid-stream; the stream's splitting as a property over texts and limits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slack_sdk.errors import SlackApiError

from adapters.slack import (
    RATE_LIMIT_RETRIES,
    SlackAdapter,
    SlackOptions,
    delivery_error,
    rate_limited_client,
)
from adapters.slack_native_stream import (
    FENCE,
    WORD_JOINER,
    SlackNativeReply,
    native_surface,
    neutralise,
    open_native_reply,
)
from bot.delivery import ReplyTarget
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.records import ConversationKey, Incoming, JobStatus
from storage.repository import Repository
from tests.support.slack_fake import (
    BOT_TOKEN,
    TEAM,
    FakeMessage,
    FakeSlack,
    command_body,
    signed_post,
)
from tests.support.slack_rig import mention, start_rig

ROOT = Path(__file__).parents[2]
FORM = "application/x-www-form-urlencoded"
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


def stream_calls(fake: FakeSlack) -> list[tuple[str, str]]:
    """(method, ts) of every stream call; startStream's ts is the one it answered."""
    calls = []
    for call in fake.calls:
        if call.method in STREAM_METHODS:
            calls.append((call.method, str(call.params.get("ts", ""))))
    return calls


def bot_messages(fake: FakeSlack, channel: str, thread: str | None) -> list[FakeMessage]:
    return [m for m in fake.thread(channel, thread) if not m.user]


REPLY = (
    "## Setting up\n\nFirst **install** the package:\n\n```python\nimport solar\n"
    "print(solar.version())\n```\n\nThen read [the guide](https://example.com/?a=1&b=2) — "
    "it has *everything* & more.\n\n- one\n- two\n"
)


async def test_a_mention_streams_natively_in_standard_markdown_and_ends_with_one_stop(
    tmp_path: Path, fake: FakeSlack
) -> None:
    engine = FakeEngine(replies=[REPLY.strip()], delay_per_chunk=0.01)
    async with start_rig(tmp_path, fake, engine=engine, streaming="native") as rig:
        await rig.event(mention("how do I set up?", ts="1690000000.000005"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = bot_messages(fake, "C0GENERAL", "1690000000.000005")
        # Standard Markdown exactly as the engine wrote it: no mrkdwn conversion, no escaping.
        assert answer.text == REPLY.strip()
        assert answer.stream == "stopped" and answer.recipient == (TEAM, "U0ALICE")
        calls = stream_calls(fake)
        assert calls[0] == ("chat.startStream", "")
        assert calls[-1] == ("chat.stopStream", answer.ts)
        assert all(ts == answer.ts for _, ts in calls[1:])
        assert [method for method, _ in calls[1:-1]] == ["chat.appendStream"] * (len(calls) - 2)
        assert len(calls) >= 3  # it did stream: at least one append between start and stop
        assert "".join(answer.appended) == answer.text  # every piece once, in order
        assert fake.calls_to("chat.postMessage") == [] and fake.calls_to("chat.update") == []
        job = rig.repository.jobs()[0]
        assert job.reply_message_ids == (answer.ts,) and job.reply_text == REPLY.strip()


async def test_a_429_on_append_waits_for_retry_after_and_loses_or_doubles_nothing(
    tmp_path: Path, fake: FakeSlack
) -> None:
    words = " ".join(f"word{n}" for n in range(60))
    engine = FakeEngine(replies=[words], delay_per_chunk=0.01)
    fake.rate_limit("chat.appendStream", 1, retry_after=1)
    async with start_rig(tmp_path, fake, engine=engine, streaming="native") as rig:
        await rig.event(mention("count", ts="1690000100.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = bot_messages(fake, "C0GENERAL", "1690000100.000001")
        assert answer.text == words and "".join(answer.appended) == words
        appends = [
            index for index, call in enumerate(fake.calls) if call.method == "chat.appendStream"
        ]
        # The refused append was sent again (same text) and the stream went on: one stream.
        first, second = fake.calls[appends[0]], fake.calls[appends[1]]
        assert first.params["markdown_text"] == second.params["markdown_text"]
        assert len(fake.calls_to("chat.startStream")) == 1
        assert rig.repository.jobs()[0].attempts == 1  # the SDK honoured it; no worker retry


async def test_retry_after_is_waited_before_the_append_is_sent_again(fake: FakeSlack) -> None:
    """The wait itself, timed on one reply (the service test above shows nothing is lost)."""
    client = rate_limited_client(BOT_TOKEN, base_url=fake.api_url)
    reply = SlackNativeReply(
        client, target("1690000150.000001"), limit=3000, error=delivery_error, min_interval=0.0
    )
    await reply.update("Hello ")
    fake.rate_limit("chat.appendStream", 1, retry_after=1)
    started = time.monotonic()
    await reply.update("Hello world ")
    assert time.monotonic() - started >= 1.0
    ids = await reply.finish("Hello world again.")
    assert fake.messages[ids[0]].text == "Hello world again."
    assert fake.messages[ids[0]].appended == ["Hello ", "world ", "again."]


async def test_a_long_answer_continues_in_new_streams_with_code_fences_kept(
    tmp_path: Path, fake: FakeSlack
) -> None:
    code = "\n".join(f"line_{n} = {n} * 2  # some code" for n in range(30))
    reply = "Intro words here. " * 12 + f"\n\n```python\n{code}\n```\n\nThat is all." + " ok" * 40
    engine = FakeEngine(replies=[reply], delay_per_chunk=0.001)
    async with start_rig(
        tmp_path, fake, engine=engine, streaming="native", message_limit=400
    ) as rig:
        await rig.event(mention("long please", ts="1690000200.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        answers = bot_messages(fake, "C0GENERAL", "1690000200.000001")
        assert len(answers) >= 3
        assert all(m.stream == "stopped" and len(m.text) <= 400 for m in answers)
        for message in answers:  # every message renders on its own: its fences are balanced
            fences = [line for line in message.text.splitlines() if line.startswith(FENCE)]
            assert len(fences) % 2 == 0, message.text
        assert len(fake.calls_to("chat.startStream")) == len(answers)
        assert rig.repository.jobs()[0].reply_message_ids == tuple(m.ts for m in answers)
        assert unsplit([m.text for m in answers]) == prose(reply)


async def test_a_reply_cut_at_the_channel_length_is_edited_in_the_same_message(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """Append-only cannot take back the words after the cut: the stream stops and the message
    is edited to the cut reply."""
    words = " ".join(f"w{n}" for n in range(200))
    engine = FakeEngine(replies=[words], delay_per_chunk=0.001)
    async with start_rig(tmp_path, fake, engine=engine, streaming="native") as rig:
        await rig.command("length 100", user="U0ADMIN")
        await rig.event(mention("cut me", ts="1690000300.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = bot_messages(fake, "C0GENERAL", "1690000300.000001")
        stored = rig.repository.jobs()[0].reply_text
        assert stored is not None and stored.endswith("…") and answer.text == stored
        assert len(fake.calls_to("chat.startStream")) == 1 and answer.stream == "stopped"


async def test_slash_commands_and_top_level_dms_keep_the_edit_based_path(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(tmp_path, fake, streaming="native") as rig:
        body = command_body("in public", response_url=fake.response_url("c"))
        await signed_post(rig.session, rig.url, body, content_type=FORM)
        dm = {
            "type": "message",
            "channel_type": "im",
            "user": "U0ALICE",
            "text": "a *dm* & more",
            "ts": "1690000400.000001",
            "channel": "D0ALICE",
        }
        await rig.event(dm)
        await rig.until(lambda: rig.jobs_done(2))
        assert fake.calls_to("chat.startStream") == []
        [command_answer] = bot_messages(fake, "C0GENERAL", None)
        assert command_answer.text.endswith("You said: Alice: in public")
        [dm_answer] = bot_messages(fake, "D0ALICE", None)
        assert dm_answer.text == "You said: Alice: a _dm_ &amp; more"  # mrkdwn, as before


def test_the_surface_decides_the_path() -> None:
    assert native_surface({"channel": "C1", "thread_ts": "1.2", "user": "U1"})
    assert native_surface({"channel": "D1", "thread_ts": "1.2"})  # a DM thread (assistant)
    assert not native_surface({"channel": "C1", "thread_ts": "1.2"})  # no recipient known
    assert not native_surface({"channel": "D1", "thread_ts": ""})  # top-level DM
    assert not native_surface({"channel": "C1", "thread_ts": "", "ts": "1.3", "header": "h"})
    assert not native_surface(
        {"channel": "C1", "thread_ts": "1.2", "user": "U1", "response_url": "http://x"}
    )


async def test_a_later_attempt_stops_the_earlier_stream_and_edits_it_never_a_second_stream(
    fake: FakeSlack,
) -> None:
    client = rate_limited_client(BOT_TOKEN, base_url=fake.api_url)
    first = SlackNativeReply(
        client, target("1690000500.000001"), limit=3000, error=delivery_error, min_interval=0.0
    )
    await first.update("The answer so far is")
    await first.update("The answer so far is partial and")
    [ts] = first.message_ids  # what the worker recorded; then the worker died
    again = open_native_reply(
        client,
        target("1690000500.000001", existing=(ts,)),
        limit=3000,
        error=delivery_error,
        min_interval=0.0,
    )
    await again.update("The answer")
    ids = await again.finish("The answer, complete.")
    assert tuple(ids) == (ts,)
    assert fake.messages[ts].text == "The answer, complete." and fake.messages[ts].stream
    assert len(fake.calls_to("chat.startStream")) == 1
    # Stopping a stream that is over already (an attempt died after its stop) is fine too.
    third = open_native_reply(
        client, target("1690000500.000001", existing=(ts,)), limit=3000, error=delivery_error
    )
    assert tuple(await third.finish("The answer, complete.")) == (ts,)
    assert fake.messages[ts].text == "The answer, complete."


# ---------------------------------------------------------------------- a worker killed mid-stream


@pytest.mark.slow
async def test_a_worker_killed_mid_stream_finishes_the_same_answer_once_in_the_same_stream(
    tmp_path: Path, fake: FakeSlack
) -> None:
    db_url = f"sqlite:///{tmp_path / 'solarbot.db'}"
    repository = Repository.open(db_url)
    question = " ".join(f"part{n}" for n in range(120))
    thread = "1690000600.000001"
    result = await Intake(repository).submit(
        Incoming(
            platform="slack",
            workspace=TEAM,
            channel="C0GENERAL",
            thread=thread,
            author_id="U0ALICE",
            author_name="Alice",
            text=question,
            message_id=thread,
            reply_target={"channel": "C0GENERAL", "thread_ts": thread, "user": "U0ALICE"},
        )
    )
    assert result is not None and result.created
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATABASE_URL": db_url,
            "SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN,
            "SOLARBOT_SLACK_API_URL": fake.api_url,
            "SOLARBOT_FAKE_DELAY_SECONDS": "0.03",
            "SOLARBOT_EDIT_INTERVAL_SECONDS": "0.05",
            "SOLARBOT_LEASE_SECONDS": "1",
            "SOLARBOT_RETRY_BASE_SECONDS": "0.05",
            "SOLARBOT_RETRY_MAX_SECONDS": "0.2",
            "SOLARBOT_POLL_SECONDS": "0.05",
        }
    )
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "worker", "--engine", "fake"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    worker = start()
    try:
        # Killed once the stream has started and taken a few appends.
        await fake.wait_for(lambda: len(fake.calls_to("chat.appendStream")) >= 3, within=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        [streamed] = bot_messages(fake, "C0GENERAL", thread)
        assert streamed.stream == "streaming"  # killed mid-stream, its text partial
        partial = streamed.text
        worker = start()
        async with asyncio.timeout(60):
            while await asyncio.to_thread(repository.count_jobs) > 0:
                await asyncio.sleep(0.1)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    expected = f"You said: Alice: {question}"
    [answer] = bot_messages(fake, "C0GENERAL", thread)  # one message: no second stream
    assert answer.ts == streamed.ts and answer.text == expected and answer.stream == "stopped"
    assert partial and expected.startswith(partial) and partial != expected
    assert len(fake.calls_to("chat.startStream")) == 1
    [job] = repository.jobs()
    assert job.status is JobStatus.DONE and job.attempts == 2
    assert job.reply_message_ids == (answer.ts,)
    key = ConversationKey(platform="slack", workspace=TEAM, channel="C0GENERAL", thread=thread)
    assert [m.text for m in repository.messages(key)] == [question, expected]
    repository.close()


# ---------------------------------------------------------------------- splitting as a property


def target(thread: str, *, existing: tuple[str, ...] = ()) -> ReplyTarget:
    return ReplyTarget(
        job_id=1,
        conversation=ConversationKey(
            platform="slack", workspace=TEAM, channel="C0GENERAL", thread=thread
        ),
        reply_target={"channel": "C0GENERAL", "thread_ts": thread, "user": "U0ALICE"},
        existing_message_ids=existing,
    )


def squash(text: str) -> str:
    return "".join(text.split())


def fence_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith(FENCE)]


def prose(text: str) -> str:
    """``text`` without its fence lines and whitespace: what the parts must hold together (a cut
    consumes the break it is made at, and adds fence lines to close and reopen a code block)."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith(FENCE)]
    return squash("\n".join(kept).replace(WORD_JOINER, ""))


def unsplit(parts: list[str]) -> str:
    return "".join(prose(part) for part in parts)


_pieces = st.lists(
    st.sampled_from(["word ", "longerword ", "\n", "\n\n", "```py\n", "x = 1\n", "```\n", "é"]),
    min_size=1,
    max_size=80,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pieces=_pieces, limit=st.integers(min_value=30, max_value=120), step=st.integers(1, 40))
# Counterexamples found before (a fence written mid-line that a cut would put at a line start, a
# cut inside a run of backticks, a fence inside a code block cut mid-line):
@example(pieces=["longerword ", "```\n", "longerword ", "```py\n"], limit=30, step=1)
@example(pieces=["longerword ", "\n\n", "longerword ", "```py\n"], limit=30, step=1)
@example(
    pieces=["word "] * 4 + ["longerword ", "```py\n", "```\n", "word ", "```py\n"],
    limit=30,
    step=1,
)
async def test_streamed_parts_hold_the_whole_reply_within_the_limit(
    fake: FakeSlack, pieces: list[str], limit: int, step: int
) -> None:
    text = "".join(pieces).strip() or "x"
    thread = f"1690001000.{len(fake.messages):06d}"
    client = rate_limited_client(BOT_TOKEN, base_url=fake.api_url)
    reply = SlackNativeReply(
        client, target(thread), limit=limit, error=delivery_error, min_interval=0.0
    )
    known: set[str] = set()  # the stream ts's the worker has recorded (after each update)
    for end in range(step, len(text), step):
        before = len(fake.calls)
        await reply.update(text[:end])
        for call in fake.calls[before:]:  # nothing goes into a stream before its ts is recorded
            if call.method in ("chat.appendStream", "chat.stopStream"):
                assert call.params["ts"] in known
        assert len([c for c in fake.calls[before:] if c.method == "chat.startStream"]) <= 1
        known = set(reply.message_ids)
    ids = await reply.finish(text)
    messages = [fake.messages[ts] for ts in ids]
    assert all(m.stream == "stopped" and len(m.text) <= limit for m in messages)
    assert all("".join(m.appended) == m.text for m in messages)
    assert unsplit([m.text for m in messages]) == prose(text)
    for message in messages[:-1]:  # every part renders on its own: its code fences are balanced
        assert len(fence_lines(message.text)) % 2 == 0, message.text
    # (the last part ends open only where the reply itself does)
    assert len(fence_lines(messages[-1].text)) % 2 == len(fence_lines(text)) % 2
    added = sum(len(fence_lines(m.text)) for m in messages) - len(fence_lines(text))
    assert added >= 0 and added % 2 == 0  # fences only added in pairs (closed, reopened)
    words = [m.text.split()[-1] for m in messages[:-1] if m.text.split()]
    assert all(word in text.split() or word.startswith(FENCE) for word in words if limit > 12)


async def test_an_apology_after_a_streamed_attempt_ends_the_stream_first(fake: FakeSlack) -> None:
    """A job given up after its stream started: the stream stops, then the apology is posted."""
    adapter = SlackAdapter(
        SlackOptions(bot_token=BOT_TOKEN, api_url=fake.api_url, ingress=False, edit_interval=0.0)
    )
    client = rate_limited_client(BOT_TOKEN, base_url=fake.api_url)
    first = SlackNativeReply(
        client, target("1690000700.000001"), limit=3000, error=delivery_error, min_interval=0.0
    )
    await first.update("Half an answer, ")
    [ts] = first.message_ids
    await adapter.post_notice(target("1690000700.000001", existing=(ts,)), "Sorry, I failed.")
    streamed, apology = bot_messages(fake, "C0GENERAL", "1690000700.000001")
    assert (
        streamed.ts == ts and streamed.stream == "stopped" and streamed.text == "Half an answer, "
    )
    assert apology.text == "Sorry, I failed."
    # Again (the apology is retried after a failure): the stream is over already; still fine.
    await adapter.post_notice(target("1690000700.000001", existing=(ts,)), "Sorry, I failed.")
    assert len(bot_messages(fake, "C0GENERAL", "1690000700.000001")) == 3


async def test_model_text_cannot_ping_anyone_through_a_native_stream(
    tmp_path: Path, fake: FakeSlack
) -> None:
    reply = "Hi <!channel> and <@U0ALICE>, see <#C0GENERAL> or <!subteam^S1>.\n```html\n<!-- kept -->\n```"
    engine = FakeEngine(replies=[reply], delay_per_chunk=0.001)
    async with start_rig(tmp_path, fake, engine=engine, streaming="native") as rig:
        await rig.event(mention("ping them", ts="1690000800.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = bot_messages(fake, "C0GENERAL", "1690000800.000001")
        prose, _, code = answer.text.partition("```")
        assert not any(token in prose for token in ("<!", "<@", "<#"))
        assert "<!-- kept -->" in code  # code is shown as written
        assert answer.text.replace(WORD_JOINER, "") == reply
        assert rig.repository.jobs()[0].reply_text == reply  # stored as the model wrote it


@given(
    parts=st.lists(st.sampled_from(["<", "!", "@", "#", "a", " ", "\n", "```", "`"]), max_size=40)
)
def test_neutralised_text_has_no_mention_syntax_outside_code_and_loses_nothing(
    parts: list[str],
) -> None:
    text = "".join(parts)
    shown = neutralise(text)
    assert shown.replace(WORD_JOINER, "") == text
    inside = False
    for line in shown.split("\n"):
        if line.lstrip().startswith(FENCE):
            inside = not inside
        elif not inside:
            assert not any(token in line for token in ("<!", "<@", "<#"))
    assert neutralise(shown) == shown


async def test_429s_past_the_sdks_retries_go_back_to_the_worker_which_finishes_the_same_stream(
    tmp_path: Path, fake: FakeSlack
) -> None:
    words = " ".join(f"word{n}" for n in range(40))
    engine = FakeEngine(replies=[words], delay_per_chunk=0.005)
    fake.rate_limit("chat.appendStream", RATE_LIMIT_RETRIES + 1, retry_after=0)
    async with start_rig(tmp_path, fake, engine=engine, streaming="native") as rig:
        await rig.event(mention("count again", ts="1690000900.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = bot_messages(fake, "C0GENERAL", "1690000900.000001")
        assert answer.text == words and answer.stream == "stopped"
        assert len(fake.calls_to("chat.startStream")) == 1  # the retry continued the same one
        # Edited into its final form: the answer as a markdown block above the feedback buttons.
        assert [block["type"] for block in answer.blocks] == ["markdown", "context_actions"]
        assert answer.blocks[0]["text"] == words
        [job] = rig.repository.jobs()
        assert job.attempts == 2 and job.reply_message_ids == (answer.ts,)
        assert rig.stored("C0GENERAL", "1690000900.000001")[-1] == ("assistant", words)


async def test_the_fake_refuses_stream_calls_as_slack_does(fake: FakeSlack) -> None:
    """What the tests above rely on: the fake's stream methods check their arguments and state
    (through the real slack_sdk client)."""
    client = rate_limited_client(BOT_TOKEN, base_url=fake.api_url)

    async def error_of(request: Any) -> str:
        with pytest.raises(SlackApiError) as caught:
            await request
        return str(caught.value.response["error"])

    assert await error_of(client.chat_startStream(channel="C0GENERAL", thread_ts="")) == (
        "invalid_arguments"
    )
    assert await error_of(client.chat_startStream(channel="C0GENERAL", thread_ts="1.1")) == (
        "missing_recipient_user_id"  # channels need the recipient; DMs do not
    )
    started = await client.chat_startStream(channel="D0ALICE", thread_ts="1.1", markdown_text="a")
    ts = str(started["ts"])
    too_long = "x" * 12_001
    assert await error_of(
        client.chat_appendStream(channel="D0ALICE", ts=ts, markdown_text=too_long)
    ) == ("msg_too_long")
    assert await error_of(
        client.chat_appendStream(channel="D0ALICE", ts="9.9", markdown_text="b")
    ) == ("message_not_found")
    assert await error_of(client.chat_update(channel="D0ALICE", ts=ts, text="b")) == (
        "message_is_streaming"
    )
    await client.chat_appendStream(channel="D0ALICE", ts=ts, markdown_text="b" * 12_000)
    await client.chat_stopStream(channel="D0ALICE", ts=ts, markdown_text="c")
    assert await error_of(
        client.chat_appendStream(channel="D0ALICE", ts=ts, markdown_text="d")
    ) == ("message_not_in_streaming_state")
    assert await error_of(client.chat_stopStream(channel="D0ALICE", ts=ts)) == (
        "message_not_in_streaming_state"
    )
    assert fake.messages[ts].text == "a" + "b" * 12_000 + "c"
    # 429 with Retry-After on demand, then the call goes through (the SDK waited and retried).
    fake.rate_limit("chat.startStream", 1, retry_after=0)
    again = await client.chat_startStream(channel="D0ALICE", thread_ts="1.2", markdown_text="e")
    assert fake.messages[str(again["ts"])].text == "e"
    assert [c.method for c in fake.calls[-2:]] == ["chat.startStream", "chat.startStream"]
