"""The Slack adapter end to end: real slack-bolt + slack_sdk against a local fake Slack
(tests/support/slack_fake.py), the real Service (intake -> SQLite -> worker) and the shipped FakeEngine."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl

import aiohttp
import pytest
import yaml

from adapters.slack import SlackAdapter, SlackOptions
from bot import texts
from bot.delivery import ReplyTarget
from bot.errors import ConfigError, StorageError
from bot.generation.fake import FakeEngine
from bot.records import ConversationKey, JobStatus
from bot.service import platform_adapters
from bot.settings import load_settings
from bot.splitting import truncate_at_word
from storage.repository import Repository
from tests.support.db_faults import refusing_inserts
from tests.support.slack_fake import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    command_body,
    event_body,
    sign,
    signed_post,
)
from tests.support.slack_rig import (
    ADMIN,
    FORM,
    JSON,
    Rig,
    ack_text,
    mention,
    reaction,
    say,
    slack_settings,
    start_rig,
)


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, fake) as value:
        yield value


# ---------------------------------------------------------------------- slash command


async def test_slash_command_is_acked_fast_then_answered_in_the_channel_and_streamed(
    tmp_path: Path, fake: FakeSlack
) -> None:
    reply = (
        "Here is **bold** advice with [a link](https://example.com/?a=1&b=2) and more words " * 3
    )
    engine = FakeEngine(replies=[reply.strip()], delay_per_chunk=0.01)
    async with start_rig(tmp_path, fake, engine=engine) as rig:
        status, body, elapsed = await rig.command("how do I stay *calm*?")
        assert status == 200 and elapsed < 3.0
        assert "Thinking" in ack_text(body)

        await rig.until(lambda: rig.jobs_done(1))
        [answer] = fake.thread("C0GENERAL", None)
        assert answer.text.startswith("<@U0ALICE> asked: how do I stay _calm_?\n\n")
        assert "Here is *bold* advice with <https://example.com/?a=1&amp;b=2|a link>" in answer.text
        assert "**" not in answer.text
        # The "thinking" placeholder was posted first, then streamed into with chat.update.
        assert "Thinking" in answer.history[0]
        assert len(answer.history) >= 3 and len(fake.calls_to("chat.update")) >= 2
        assert rig.stored("C0GENERAL") == [
            ("user", "how do I stay *calm*?"),
            ("assistant", reply.strip()),
        ]


async def test_private_question_is_answered_only_to_the_asker(rig: Rig) -> None:
    status, _, _ = await rig.command("--private what is my secret?", name="private")
    assert status == 200
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.fake.thread("C0GENERAL", None) == []  # nothing posted in the channel
    answers = [r for r in rig.fake.responses if r["_name"] == "private"]
    assert [r["text"] for r in answers] == ["You said: Alice: what is my secret?"]
    assert answers[0]["response_type"] == "ephemeral"


async def test_a_private_answer_is_cleaned_like_every_other_reply(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """Issue 13.5: the ``--private`` path (response_url, not the streamed reply) gets the same
    hygiene; model text that looks like the converter's old in-band markers converts cleanly."""
    sneaky = "ok\u202e gnp.exe\u202c \x1b\x00 [a](https://x.io/?a&b) \x030\x04 \ue000 👩\u200d💻"
    engine = FakeEngine(replies=[sneaky, sneaky])
    async with start_rig(tmp_path, fake, engine=engine) as rig:
        await rig.command("--private show me", name="private")
        await rig.command("in public", name="public")
        await rig.until(lambda: rig.jobs_done(2))
        (private,) = [r for r in rig.fake.responses if r["_name"] == "private"]
        clean = "ok gnp.exe  <https://x.io/?a&amp;b|a> 0 \ue000 👩\u200d💻"
        assert private["text"] == clean and private["response_type"] == "ephemeral"
        public = [m.text for m in rig.fake.thread("C0GENERAL", None)]
        assert any(text.endswith(clean) for text in public), public


async def test_a_channel_the_bot_is_not_in_gets_a_private_answer(rig: Rig) -> None:
    rig.fake.fail("chat.postMessage", "not_in_channel")
    await rig.command("hello?", channel="C0PRIVATE", name="outside")
    await rig.until(lambda: rig.jobs_done(1))
    texts = [r["text"] for r in rig.fake.responses if r["_name"] == "outside"]
    assert "not a member of this channel" in texts[0]
    assert texts[-1] == "You said: Alice: hello?"


# ---------------------------------------------------------------------- events


async def test_mention_in_a_thread_is_answered_there_once_despite_slack_retries(rig: Rig) -> None:
    event = mention("what is SOLAR?", ts="1690000000.000005", thread_ts="1690000000.000001")
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    # Slack did not see our 200 in time and retries the same event, while the first is handled...
    statuses = await asyncio.gather(
        rig.event(event, event_id="Ev0001"), rig.event(event, event_id="Ev0001", **retry)
    )
    assert statuses == [200, 200]
    await rig.until(lambda: rig.jobs_done(1))
    # ... and once more after the answer was posted.
    assert await rig.event(event, event_id="Ev0001", **{**retry, "X-Slack-Retry-Num": "2"}) == 200
    await asyncio.sleep(0.2)  # time for a second answer, were one coming
    [answer] = rig.fake.thread("C0GENERAL", "1690000000.000001")
    assert answer.text == "You said: Alice: what is SOLAR?"
    assert len(rig.engine.requests) == 1
    assert "<@" not in rig.engine.prompts[0]  # the bot's own mention is not sent to the model
    assert rig.stored("C0GENERAL", "1690000000.000001") == [
        ("user", "what is SOLAR?"),
        ("assistant", "You said: Alice: what is SOLAR?"),
    ]


async def test_a_top_level_mention_starts_a_thread_that_keeps_its_context(rig: Rig) -> None:
    await rig.event(mention("first question", ts="1690000100.000001"))
    await rig.until(lambda: rig.jobs_done(1))
    await rig.event(
        mention("second question", ts="1690000100.000009", thread_ts="1690000100.000001")
    )
    await rig.until(lambda: rig.jobs_done(2))
    answers = rig.fake.thread("C0GENERAL", "1690000100.000001")
    assert [a.text for a in answers] == [
        "You said: Alice: first question",
        "You said: Alice: second question",
    ]
    assert "first question" in rig.engine.prompts[1]  # the thread's history reached the model


async def test_a_direct_message_is_answered_in_the_dm_and_bot_messages_are_ignored(
    rig: Rig,
) -> None:
    dm = {
        "type": "message",
        "channel_type": "im",
        "channel": "D0DM",
        "user": "U0ALICE",
        "text": "hi bot &amp; friends",
        "ts": "1690000200.000001",
    }
    assert await rig.event(dm) == 200
    await rig.event({**dm, "ts": "1690000200.000002", "bot_id": "B0OTHER", "text": "a bot"})
    await rig.event({**dm, "ts": "1690000200.000003", "subtype": "message_changed"})
    await rig.until(lambda: rig.jobs_done(1))
    [answer] = rig.fake.thread("D0DM", None)
    assert answer.text == "You said: Alice: hi bot &amp; friends"  # "&" escaped for Slack
    assert rig.stored("D0DM") == [
        ("user", "hi bot & friends"),
        ("assistant", answer.text.replace("&amp;", "&")),
    ]
    assert len(rig.repository.jobs()) == 1


async def test_bad_signatures_and_stale_requests_get_401_and_store_nothing(rig: Rig) -> None:
    body = event_body(mention("sneaky", ts="1690000300.000001"))
    forged = sign(body, secret="not-the-secret")
    stale = sign(body, timestamp=int(time.time()) - 6 * 60)
    for signature in (forged, stale):
        status, _ = await signed_post(
            rig.session, rig.url, body, content_type=JSON, signature=signature
        )
        assert status == 401
    command = command_body("sneaky", response_url=rig.fake.response_url())
    status, _ = await signed_post(
        rig.session, rig.url, command, content_type=FORM, signature=sign(command, secret="x")
    )
    assert status == 401
    await asyncio.sleep(0.2)
    assert rig.repository.jobs() == [] and rig.fake.messages == {}


async def test_url_verification_is_answered(rig: Rig) -> None:
    body = json.dumps({"token": "t", "challenge": "challenge-123", "type": "url_verification"})
    status, answer = await signed_post(rig.session, rig.url, body, content_type=JSON)
    assert status == 200 and "challenge-123" in answer


async def test_workspace_and_channel_allowlists(tmp_path: Path, fake: FakeSlack) -> None:
    async with start_rig(
        tmp_path,
        fake,
        allowed_workspaces=frozenset({TEAM}),
        allowed_channels=frozenset({"C0ALLOWED"}),
    ) as rig:
        await rig.event(mention("not here", ts="1690000400.000001", channel="C0GENERAL"))
        status, body, _ = await rig.command("nor here", channel="C0GENERAL")
        assert status == 200 and "not enabled" in ack_text(body)
        await rig.event(mention("here", ts="1690000400.000002", channel="C0ALLOWED"))
        await rig.until(lambda: rig.jobs_done(1))
        assert [m.text for m in fake.messages.values()] == ["You said: Alice: here"]
        assert len(rig.repository.jobs()) == 1


# ---------------------------------------------------------------------- sub-commands


async def test_forget_is_refused_to_a_non_admin_and_done_for_an_admin(rig: Rig) -> None:
    await rig.command("remember me")
    await rig.until(lambda: rig.jobs_done(1))
    await rig.command("forget", user="U0ALICE", name="alice")
    await rig.until(lambda: any(r["_name"] == "alice" for r in rig.fake.responses))
    refusal = next(r for r in rig.fake.responses if r["_name"] == "alice")
    assert "only admins" in refusal["text"] and refusal["response_type"] == "ephemeral"
    assert len(rig.stored("C0GENERAL")) == 2

    await rig.command("forget", user=ADMIN, name="admin")
    await rig.until(lambda: any(r["_name"] == "admin" for r in rig.fake.responses))
    done = next(r for r in rig.fake.responses if r["_name"] == "admin")
    assert "forgot" in done["text"] and rig.stored("C0GENERAL") == []


async def test_prompt_command_changes_the_system_prompt_of_the_next_question(rig: Rig) -> None:
    await rig.command("prompt You are a pirate.", user="U0ALICE", name="alice")
    await rig.command("prompt You are a pirate. Answer in rhyme.", user=ADMIN, name="admin")
    await rig.until(lambda: {"alice", "admin"} <= {r["_name"] for r in rig.fake.responses})
    by_name = {r["_name"]: r["text"] for r in rig.fake.responses}
    assert "only admins" in by_name["alice"]
    assert "system prompt is now" in by_name["admin"]
    # A thread inherits its channel's prompt.
    await rig.event(mention("ahoy?", ts="1690000500.000002", thread_ts="1690000500.000001"))
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.engine.prompts[-1].startswith("### System:\nYou are a pirate. Answer in rhyme.\n")

    await rig.command("status", name="status")
    await rig.until(lambda: any(r["_name"] == "status" for r in rig.fake.responses))
    status = next(r for r in rig.fake.responses if r["_name"] == "status")["text"]
    assert "fake-solar" in status and "custom system prompt" in status and "*Queue:* 0" in status


async def test_help_is_the_ack_itself(rig: Rig) -> None:
    status, body, _ = await rig.command("help")
    assert status == 200
    text = ack_text(body)
    assert "*/solar forget*" in text and "--private" in text and "(admins only)" in text
    assert rig.repository.jobs() == []


# ---------------------------------------------------------------------- delivery


async def test_a_long_reply_with_code_continues_in_the_thread_and_nothing_is_lost(
    tmp_path: Path, fake: FakeSlack
) -> None:
    # The fake engine streams one word per token and stops at max_new_tokens (512): long words.
    prose = " ".join(f"lorem-ipsum-dolor-sit-amet-{i}" for i in range(100))
    code = "\n".join(f"    value_{i}=compute({i},'a-fairly-long-argument')+1" for i in range(150))
    reply = f"{prose}\n\n```python\n{code}\n```\n\nAfter the code: {prose}"
    engine = FakeEngine(replies=[reply], delay_per_chunk=0.0)
    async with start_rig(tmp_path, fake, engine=engine) as rig:
        await rig.event(mention("show me code", ts="1690000600.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        messages = fake.thread("C0GENERAL", "1690000600.000001")
        assert len(messages) >= 3
        for message in messages:
            assert len(message.text) <= 3000
            assert message.text.count("```") % 2 == 0  # every code block is closed in its message

        def content(text: str) -> str:
            kept = [line for line in text.split("\n") if not line.strip().startswith("```")]
            return "".join("".join(kept).split())

        assert content("".join(m.text for m in messages)) == content(reply)
        job = rig.repository.jobs()[0]
        assert list(job.reply_message_ids) == [m.ts for m in messages]


async def test_rate_limits_are_honoured_and_failures_go_back_to_the_worker(rig: Rig) -> None:
    rig.fake.rate_limit("chat.postMessage", 1, retry_after=0)
    rig.fake.rate_limit("chat.update", 1, retry_after=0)
    await rig.event(mention("busy day", ts="1690000700.000001"))
    await rig.until(lambda: rig.jobs_done(1))
    [answer] = rig.fake.thread("C0GENERAL", "1690000700.000001")
    assert answer.text == "You said: Alice: busy day"
    assert len(rig.fake.calls_to("chat.postMessage")) == 2  # the 429, then the retry

    # A failure the SDK does not retry becomes a DeliveryError: the worker retries the job.
    rig.fake.fail("chat.postMessage", "internal_error")
    await rig.event(mention("second", ts="1690000700.000002"))
    await rig.until(lambda: rig.jobs_done(2))
    [second] = rig.fake.thread("C0GENERAL", "1690000700.000002")
    assert second.text == "You said: Alice: second"
    assert max(job.attempts for job in rig.repository.jobs()) == 2


async def test_tokens_and_the_signing_secret_are_never_logged(
    tmp_path: Path, fake: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_rig(tmp_path, fake) as rig:
        await rig.command("hello")
        await rig.event(mention("hi", ts="1690000800.000001"))
        await rig.until(lambda: rig.jobs_done(2))
    for secret in (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN):
        assert secret not in caplog.text


# ---------------------------------------------------------------------- Socket Mode


async def test_socket_mode_slash_command_is_acknowledged_and_answered(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(
        tmp_path, fake, mode="socket", signing_secret=None, app_token=APP_TOKEN
    ) as rig:
        assert rig.adapter.http_port is None  # no HTTP endpoint in Socket Mode
        body = command_body(
            "hello socket", response_url=fake.response_url(), trigger_id="socket-trigger-1"
        )
        payload = dict(parse_qsl(body))
        envelope = await fake.send_envelope("slash_commands", payload)
        await rig.until(lambda: any(a.get("envelope_id") == envelope for a in fake.acks))
        ack = next(a for a in fake.acks if a["envelope_id"] == envelope)
        assert "Thinking" in ack["payload"]["text"]
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = fake.thread("C0GENERAL", None)
        assert answer.text.endswith("You said: Alice: hello socket")


# ---------------------------------------------------------------------- configuration


def test_slack_settings_parse_lists_and_start_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOLARBOT_SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SOLARBOT_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    monkeypatch.setenv("SOLARBOT_SLACK_ADMIN_USERS", "U0ADMIN, W0OTHER")
    monkeypatch.setenv("SOLARBOT_SLACK_ALLOWED_CHANNELS", "C0ONE,C0TWO")
    settings = load_settings(env_file=None)
    assert settings.slack_admin_users == ("U0ADMIN", "W0OTHER")
    assert settings.slack_allowed_channels == ("C0ONE", "C0TWO")
    assert settings.slack_mode == "http" and settings.slack_command == "/solar"
    assert BOT_TOKEN not in repr(settings) and SIGNING_SECRET not in repr(settings)
    [adapter] = platform_adapters(settings)
    assert isinstance(adapter, SlackAdapter) and adapter.platform == "slack"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SOLARBOT_SLACK_ADMIN_USERS": "U0ADMIN,bob"}, "SOLARBOT_SLACK_ADMIN_USERS"),
        ({"SOLARBOT_SLACK_ALLOWED_WORKSPACES": "T0ONE;T0TWO"}, "SOLARBOT_SLACK_ALLOWED_WORKSPACES"),
        ({"SOLARBOT_SLACK_MODE": "websocket"}, "SOLARBOT_SLACK_MODE"),
        ({"SOLARBOT_SLACK_COMMAND": "solar"}, "SOLARBOT_SLACK_COMMAND"),
        ({"SOLARBOT_SLACK_BOT_TOKEN": "xoxp-user-token"}, "SOLARBOT_SLACK_BOT_TOKEN"),
        ({"SOLARBOT_SLACK_PORT": "70000"}, "SOLARBOT_SLACK_PORT"),
    ],
)
def test_a_bad_slack_setting_fails_with_one_line_naming_the_key(
    environ: dict[str, str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and "\n" not in message


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN}, "SOLARBOT_SLACK_SIGNING_SECRET"),
        (
            {"SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "SOLARBOT_SLACK_MODE": "socket"},
            "SOLARBOT_SLACK_APP_TOKEN",
        ),
    ],
)
def test_a_missing_credential_for_the_mode_is_one_clear_line(
    environ: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        platform_adapters(load_settings(environ=environ))
    assert str(caught.value).startswith(f"{key}: ") and "\n" not in str(caught.value)


async def test_a_rejected_token_stops_start_up_with_one_clear_line(
    tmp_path: Path, fake: FakeSlack
) -> None:
    adapter = SlackAdapter(
        SlackOptions(
            bot_token="xoxb-wrong",
            signing_secret=SIGNING_SECRET,
            host="127.0.0.1",
            port=0,
            api_url=fake.api_url,
        )
    )
    repository = Repository.open(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        from bot.intake import Intake

        with pytest.raises(ConfigError, match=r"^SOLARBOT_SLACK_BOT_TOKEN: Slack rejected"):
            await adapter.start(Intake(repository))
        assert adapter.http_port is None
    finally:
        await adapter.stop()
        repository.close()


# ---------------------------------------------------------------------- the real command line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_solarbot_run_with_slack_credentials_serves_slack(
    tmp_path: Path, fake: FakeSlack
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLARBOT_")}
    env.update(
        {
            "SOLARBOT_DATA_DIR": str(tmp_path),
            "SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN,
            "SOLARBOT_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SOLARBOT_SLACK_HOST": "127.0.0.1",
            "SOLARBOT_SLACK_PORT": str(port),
            "SOLARBOT_SLACK_API_URL": fake.api_url,
            "SOLARBOT_LOG_LEVEL": "DEBUG",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "--engine",
        "fake",
        env=env,
        cwd=Path(__file__).parents[2],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/slack/events"
        body = event_body(mention("from the command line", ts="1690000900.000001"))
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:  # until the adapter listens
                try:
                    status, _ = await signed_post(session, url, body, content_type=JSON)
                    break
                except aiohttp.ClientConnectionError:
                    assert process.returncode is None, "solarbot run exited early"
                    await asyncio.sleep(0.1)
        assert status == 200
        await fake.wait_for(lambda: bool(fake.thread("C0GENERAL", "1690000900.000001")), within=30)
        await fake.wait_for(
            lambda: fake.thread("C0GENERAL", "1690000900.000001")[0].text.endswith("line"),
            within=10,
        )
        [answer] = fake.thread("C0GENERAL", "1690000900.000001")
        assert answer.text == "You said: Alice: from the command line"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    log = stderr.decode()
    assert "adapter slack started" in log
    for secret in (BOT_TOKEN, SIGNING_SECRET):
        assert secret not in log


# ---------------------------------------------------------------------- more delivery paths


async def test_a_question_that_cannot_be_answered_turns_the_placeholder_into_an_apology(
    tmp_path: Path, fake: FakeSlack
) -> None:
    engine = FakeEngine()
    engine.fail_next(5)  # every attempt (SOLARBOT_MAX_ATTEMPTS defaults to 5)
    async with start_rig(tmp_path, fake, engine=engine) as rig:
        await rig.command("will this work?")
        await rig.until(lambda: bool(rig.repository.jobs(status=JobStatus.FAILED)))
        [message] = fake.thread("C0GENERAL", None)  # the placeholder, nothing posted beside it
        assert message.text == ("<@U0ALICE> asked: will this work?\n\n" + texts.FAILED_REPLY)


async def test_rate_limits_beyond_the_sdk_retries_carry_retry_after_to_the_worker(
    fake: FakeSlack,
) -> None:
    from adapters.slack import RATE_LIMIT_RETRIES, SlackReply, rate_limited_client
    from bot.errors import DeliveryError

    fake.rate_limit("chat.postMessage", RATE_LIMIT_RETRIES + 1, retry_after=0)
    target = ReplyTarget(
        job_id=1,
        conversation=ConversationKey(platform="slack", channel="C0GENERAL"),
        reply_target={"channel": "C0GENERAL", "thread_ts": ""},
    )
    reply = SlackReply(rate_limited_client(BOT_TOKEN, base_url=fake.api_url), target)
    with pytest.raises(DeliveryError) as caught:
        await reply.finish("hello")
    assert caught.value.retry_after == 0.0
    assert len(fake.calls_to("chat.postMessage")) == RATE_LIMIT_RETRIES + 1
    assert reply.message_ids == ()


def test_the_manifest_matches_what_the_adapter_handles() -> None:
    manifest = yaml.safe_load(
        (Path(__file__).parents[2] / "docker/slack-manifest.yaml").read_text()
    )
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == load_settings(environ={}).slack_command
    assert set(manifest["settings"]["event_subscriptions"]["bot_events"]) == {
        "app_mention",
        "assistant_thread_started",
        "assistant_thread_context_changed",
        "message.im",
        "message.channels",  # auto-answer channels (adapters/slack_auto.py)
        "message.groups",
        "reaction_added",
        "reaction_removed",
    }
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_mentions:read", "chat:write", "commands", "im:history", "reactions:read"} <= scopes
    assert {"channels:history", "groups:history"} <= scopes  # what message.* events need
    assert manifest["settings"]["socket_mode_enabled"] is True


async def test_a_delivery_only_adapter_needs_no_secret_and_opens_no_endpoint(
    tmp_path: Path, fake: FakeSlack
) -> None:
    settings = load_settings(
        environ={"SOLARBOT_SLACK_BOT_TOKEN": BOT_TOKEN, "SOLARBOT_SLACK_API_URL": fake.api_url}
    )
    [adapter] = platform_adapters(settings, ingress=False)  # what `solarbot worker` builds
    assert isinstance(adapter, SlackAdapter)
    async with start_rig(tmp_path, fake) as rig:  # the ingress lives in another process
        await adapter.start(rig.service.intake)
        try:
            assert adapter.http_port is None
            target = ReplyTarget(
                job_id=1,
                conversation=ConversationKey(platform="slack", channel="C0GENERAL"),
                reply_target={"channel": "C0GENERAL", "thread_ts": "1.2"},
            )
            stream = await adapter.open_reply(target)
            ids = await stream.finish("Delivered over **REST** only.")
            [message] = fake.thread("C0GENERAL", "1.2")
            assert list(ids) == [message.ts] and message.text == "Delivered over *REST* only."
        finally:
            await adapter.stop()


async def test_a_question_that_cannot_be_stored_says_so_instead_of_thinking_forever(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def database_down(*args: object, **kwargs: object) -> None:
        raise StorageError("the database is unreachable")

    monkeypatch.setattr(rig.repository, "enqueue", database_down)
    status, _, _ = await rig.command("anyone there?", name="down")
    assert status == 200
    await rig.until(lambda: any(r["_name"] == "down" for r in rig.fake.responses))
    assert [r["text"] for r in rig.fake.responses] == [texts.FAILED_REPLY]
    [placeholder] = rig.fake.thread("C0GENERAL", None)
    await rig.until(lambda: placeholder.text.endswith(texts.FAILED_REPLY))


async def test_an_event_that_cannot_be_stored_is_not_acknowledged_so_slack_sends_it_again(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    event = mention("are you there?", ts="1690000900.000001")
    with refusing_inserts(rig.repository, "jobs"):
        # Not a 200: Slack keeps the event and retries it (instead of it being lost).
        assert await rig.event(event, event_id="Ev0DOWN") == 500
    assert rig.repository.jobs() == [] and rig.stored("C0GENERAL", "1690000900.000001") == []
    assert rig.fake.thread("C0GENERAL", "1690000900.000001") == []
    # The database is back; Slack's retry is stored and answered, once.
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
    assert await rig.event(event, event_id="Ev0DOWN", **retry) == 200
    await rig.until(lambda: rig.jobs_done(1))
    [answer] = rig.fake.thread("C0GENERAL", "1690000900.000001")
    assert answer.text == "You said: Alice: are you there?"
    assert rig.stored("C0GENERAL", "1690000900.000001") == [
        ("user", "are you there?"),
        ("assistant", "You said: Alice: are you there?"),
    ]
    assert SIGNING_SECRET not in caplog.text and BOT_TOKEN not in caplog.text


async def test_socket_mode_leaves_an_event_it_cannot_store_unacknowledged(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(
        tmp_path, fake, mode="socket", signing_secret=None, app_token=APP_TOKEN
    ) as rig:
        payload = json.loads(event_body(mention("socket down?", ts="1690000950.000001")))
        with refusing_inserts(rig.repository, "jobs"):
            refused = await fake.send_envelope("events_api", payload)
            await asyncio.sleep(1.0)
        assert not any(a.get("envelope_id") == refused for a in fake.acks)
        assert rig.repository.jobs() == []
        redelivered = await fake.send_envelope("events_api", {**payload, "retry_attempt": 1})
        await rig.until(lambda: any(a.get("envelope_id") == redelivered for a in fake.acks))
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = fake.thread("C0GENERAL", "1690000950.000001")
        assert answer.text == "You said: Alice: socket down?"


async def test_slash_commands_are_acked_before_they_are_handled(
    tmp_path: Path, fake: FakeSlack
) -> None:
    """Events are handled before Slack gets its answer; commands must not be: the ack (Slack's 3
    s) comes first, even when posting the placeholder is slow."""
    async with start_rig(tmp_path, fake) as rig:
        fake.delay("chat.postMessage", 2.0)
        status, body, elapsed = await rig.command("slow Slack today?")
        assert status == 200 and "Thinking" in ack_text(body) and elapsed < 1.0
        await rig.until(lambda: rig.jobs_done(1))
        [answer] = fake.thread("C0GENERAL", None)
        assert answer.text.endswith("You said: Alice: slow Slack today?")


# ---------------------------------------------------------------------- channel settings


async def test_admins_set_length_language_and_prompt_and_threads_follow_them(
    tmp_path: Path, fake: FakeSlack
) -> None:
    # Alice sends seven commands and a question: more than the default burst of five
    # (commands pass the rate limits, tests/platforms/test_platform_abuse.py).
    async with start_rig(tmp_path, fake, environ={"SOLARBOT_USER_BURST": "10"}) as rig:
        for index, text in enumerate(["length 30", "language German", "off", "on", "prompt Hi."]):
            refusal = await say(rig, text, user="U0ALICE", name=f"alice{index}")
            assert f"only admins can use `/solar {text.split()[0]}`" in refusal
        assert slack_settings(rig) == (None, True, None, None)

        assert "30 characters" in await say(rig, "length 30", user=ADMIN, name="a1")
        assert "German" in await say(rig, "language German", user=ADMIN, name="a2")
        assert "now" in await say(rig, "prompt Be a pirate.", user=ADMIN, name="a3")
        too_long = "language " + "x" * 41
        assert "needs a language name" in await say(rig, too_long, user=ADMIN, name="a4")
        assert slack_settings(rig) == ("Be a pirate.", True, 30, "German")

        question = "tell me all about the longest rivers of the world"
        await rig.event(mention(question, ts="1690000900.000002", thread_ts="1690000900.000001"))
        await rig.until(lambda: rig.jobs_done(1))
        assert rig.engine.prompts[-1].startswith(
            "### System:\nBe a pirate.\n\nAnswer in German.\n\n### User:\n"
        )
        [answer] = rig.fake.thread("C0GENERAL", "1690000900.000001")
        assert answer.text == truncate_at_word(f"You said: Alice: {question}", 30)
        assert len(answer.text) <= 30 and answer.text.endswith("…")

        status = await say(rig, "status", user="U0ALICE", name="status")
        assert "custom system prompt (12 characters)" in status and "replies on" in status
        assert "*Reply length:* at most 30 characters" in status and "*Language:* German" in status

        assert "no longer" in await say(rig, "language reset", user=ADMIN, name="a5")
        await rig.event(mention("and now?", ts="1690000900.000003", thread_ts="1690000900.000001"))
        await rig.until(lambda: rig.jobs_done(2))
        assert "Answer in" not in rig.engine.prompts[-1]


async def test_a_switched_off_channel_takes_only_an_admins_on_and_status(rig: Rig) -> None:
    assert "I'm off" in await say(rig, "off", user=ADMIN, name="off")
    assert await say(rig, "status", user="U0ALICE", name="alice") == texts.CHANNEL_DISABLED
    assert await say(rig, "on", user="U0ALICE", name="alice-on") == texts.CHANNEL_DISABLED
    assert await say(rig, "length 50", user=ADMIN, name="length") == texts.CHANNEL_DISABLED
    assert "replies off" in await say(rig, "status", user=ADMIN, name="status")
    await rig.event(mention("hello?", ts="1690000950.000001"))
    await asyncio.sleep(0.3)
    assert rig.repository.jobs() == [] and slack_settings(rig) == (None, False, None, None)

    assert "on in this channel" in await say(rig, "on", user=ADMIN, name="on")
    await rig.event(mention("back?", ts="1690000950.000002"))
    await rig.until(lambda: rig.jobs_done(1))
    assert [p for p in rig.engine.prompts if "hello?" in p] == []
    assert rig.fake.thread("C0GENERAL", "1690000950.000002")[0].text == "You said: Alice: back?"


# ---------------------------------------------------------------------- feedback


async def test_thumbs_on_answers_are_stored_as_feedback_until_removed(rig: Rig) -> None:
    await rig.command("what is SOLAR?")  # answered in the channel, into the placeholder
    await rig.event(mention("and Slack?", ts="1690001000.000001"))
    await rig.until(lambda: rig.jobs_done(2))
    jobs = {job.reply_text: job.id for job in rig.repository.jobs()}
    command_job, mention_job = (
        jobs["You said: Alice: what is SOLAR?"],
        jobs["You said: Alice: and Slack?"],
    )
    [answer] = rig.fake.thread("C0GENERAL", None)
    [threaded] = rig.fake.thread("C0GENERAL", "1690001000.000001")

    def votes(job_id: int) -> set[tuple[str, str]]:
        return {(f.user_id, f.rating.value) for f in rig.repository.feedback_for(job_id)}

    await rig.event(reaction("+1", answer.ts, user="U0BOB"))
    await rig.event(reaction("-1::skin-tone-3", answer.ts, user="U0CAROL"))
    await rig.event(reaction("thumbsdown", threaded.ts, user="U0BOB"))
    await rig.event(reaction("tada", answer.ts, user="U0DAVE"))  # not feedback
    await rig.event(reaction("-1", "1690001000.000001", user="U0DAVE", item_user="U0ALICE"))
    await rig.until(lambda: len(votes(command_job)) == 2 and len(votes(mention_job)) == 1)
    assert votes(command_job) == {("U0BOB", "up"), ("U0CAROL", "down")}
    assert votes(mention_job) == {("U0BOB", "down")}

    await rig.event(reaction("+1", answer.ts, user="U0BOB", added=False))
    await rig.until(lambda: votes(command_job) == {("U0CAROL", "down")})
    await asyncio.sleep(0.1)
    assert votes(mention_job) == {("U0BOB", "down")}


# ---------------------------------------------------------------------- human handoff


async def test_asking_for_a_human_pings_the_support_group_once_and_resume_brings_the_bot_back(
    tmp_path: Path, fake: FakeSlack
) -> None:
    async with start_rig(tmp_path, fake, support_group="S0SUPPORT") as rig:
        ask = mention("Human please, this is urgent", ts="1690002000.000001")
        await rig.event(ask, event_id="Ev0HUMAN")
        await rig.until(lambda: bool(rig.fake.thread("C0GENERAL", "1690002000.000001")))
        [notice] = rig.fake.thread("C0GENERAL", "1690002000.000001")
        assert notice.text.startswith("<!subteam^S0SUPPORT> Someone here asked for a human")
        assert "`/solar resume`" in notice.text
        # Slack retries the event: no second ping.
        await rig.event(ask, event_id="Ev0HUMAN", **{"X-Slack-Retry-Num": "1"})
        await rig.event(mention("hello?", ts="1690002000.000002", thread_ts="1690002000.000001"))
        await rig.event(mention("elsewhere", ts="1690002000.000003"))
        await rig.until(lambda: rig.jobs_done(1))  # other conversations are answered
        await asyncio.sleep(0.2)
        assert len(rig.fake.thread("C0GENERAL", "1690002000.000001")) == 1
        assert rig.stored("C0GENERAL", "1690002000.000001") == [
            ("user", "Human please, this is urgent")
        ]
        assert [p for p in rig.engine.prompts if "urgent" in p or "hello?" in p] == []
        status = await say(rig, "status", user="U0ALICE", name="status")
        assert "*Waiting for a human:* 1 conversation(s)" in status

        assert "I'm back" in await say(rig, "resume", user="U0ALICE", name="resume")
        await rig.event(mention("back?", ts="1690002000.000004", thread_ts="1690002000.000001"))
        await rig.until(lambda: rig.jobs_done(2))
        assert (
            rig.fake.thread("C0GENERAL", "1690002000.000001")[-1].text == "You said: Alice: back?"
        )


async def test_a_slash_question_in_a_conversation_waiting_for_a_human_is_not_answered(
    rig: Rig,
) -> None:
    await rig.command("talk to a human", name="first")
    await rig.until(
        lambda: any("asked for a human" in m.text for m in rig.fake.thread("C0GENERAL", None))
    )
    [notice] = rig.fake.thread("C0GENERAL", None)  # the placeholder became the notice
    assert notice.text.startswith("<@U0ALICE> asked: talk to a human\n\nSomeone here asked")
    await rig.command("what now?", name="second")
    await rig.until(lambda: any(r["_name"] == "second" for r in rig.fake.responses))
    waiting = next(r for r in rig.fake.responses if r["_name"] == "second")
    assert "waiting for a human" in waiting["text"] and waiting["response_type"] == "ephemeral"
    await rig.until(lambda: len(rig.fake.thread("C0GENERAL", None)) == 1)  # placeholder removed
    assert rig.engine.requests == []
