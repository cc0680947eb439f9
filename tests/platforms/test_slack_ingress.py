"""Slack's public HTTP endpoint under attack, and silence where the bot must stay silent: real
slack-bolt against tests/support/slack_fake.py, the real Service over SQLite (helpers of tests/platforms/test_slack.py)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import texts
from tests.support.ingress_fuzz import (
    LoopThread,
    deep_json,
    hostile_text,
    http_headers,
    json_values,
    raw_bodies,
    tracebacks_at_error,
)
from tests.support.slack_fake import (
    SIGNING_SECRET,
    TEAM,
    FakeSlack,
    command_body,
    event_body,
)
from tests.support.slack_rig import ADMIN, FORM, JSON, Rig, mention, say, start_rig


@pytest.fixture
def fake(slack_fake: FakeSlack) -> FakeSlack:
    return slack_fake


@pytest.fixture
async def rig(tmp_path: Path, fake: FakeSlack) -> AsyncIterator[Rig]:
    async with start_rig(tmp_path, fake) as value:
        yield value


def signed(body: bytes, *, timestamp: str | None = None) -> dict[str, str]:
    stamp = timestamp or str(int(time.time()))
    base = b"v0:" + stamp.encode() + b":" + body
    digest = hmac.new(SIGNING_SECRET.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest}"}


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


async def signed_event(rig: Rig, event: dict[str, Any]) -> int:
    body = event_body(event).encode()
    status, _ = await post(rig.session, rig.url, body, {"Content-Type": JSON, **signed(body)})
    return status


async def answered(rig: Rig, text: str, ts: str) -> None:
    """A valid mention is still answered in its thread."""
    assert await signed_event(rig, mention(text, ts=ts)) == 200


# ---------------------------------------------------------------------- item 9: junk at the door

NOW = str(int(time.time()))
JUNK: list[tuple[str, bytes, dict[str, str], int]] = [
    ("not JSON, unsigned", b"{not json", {"Content-Type": JSON}, 401),
    (
        "not JSON, bad signature",
        b"{x",
        {"Content-Type": JSON, "X-Slack-Request-Timestamp": NOW, "X-Slack-Signature": "v0=00"},
        401,
    ),
    (
        "timestamp not a number",
        b"{}",
        {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": "v0=1"},
        401,
    ),
    (
        "timestamp huge",
        b"{}",
        {"X-Slack-Request-Timestamp": "9" * 5000, "X-Slack-Signature": "v0=1"},
        401,
    ),
    (
        "timestamp float",
        b"{}",
        {"X-Slack-Request-Timestamp": "1e10", "X-Slack-Signature": "v0=1"},
        401,
    ),
    (
        "timestamp negative",
        b"{}",
        {"X-Slack-Request-Timestamp": "-1", "X-Slack-Signature": "v0=1"},
        401,
    ),
    ("timestamp far future", b"{}", signed(b"{}", timestamp="99999999999"), 401),
    ("no headers, form", b"payload=%7Bx", {"Content-Type": FORM}, 401),
    ("not UTF-8, unsigned", b"\xff\xfe\x00", {"Content-Type": JSON}, 401),
    ("signed, not JSON", b"{not json", {"Content-Type": JSON, **signed(b"{not json")}, 400),
    ("signed, a list", b"[1]", {"Content-Type": JSON, **signed(b"[1]")}, 400),
    ("signed, not UTF-8", b"{\xff}", {"Content-Type": JSON, **signed(b"{\xff}")}, 400),
    (
        "signed, nested",
        deep_json(100_000),
        {"Content-Type": JSON, **signed(deep_json(100_000))},
        400,
    ),
    ("signed, bad payload", b"payload=%5B", {"Content-Type": FORM, **signed(b"payload=%5B")}, 400),
    (
        "signed, odd team",
        b'{"team": "x", "user": 5}',
        {"Content-Type": JSON, **signed(b'{"team": "x", "user": 5}')},
        400,
    ),
]


@pytest.mark.slow
async def test_junk_at_the_public_endpoint_gets_401_or_400_without_a_traceback(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, body, headers, expected in JUNK:
        if expected == 400:  # signed just now (the module-level stamp may be old by now)
            headers = {**headers, **signed(body)}
        status, answer = await post(rig.session, rig.url, body, headers)
        assert (name, status) == (name, expected), answer
        assert "Traceback" not in answer
    assert tracebacks_at_error(caplog.records) == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert rig.repository.jobs() == [] and rig.fake.messages == {}
    await answered(rig, "still there?", "1690003000.000001")
    await rig.until(lambda: rig.jobs_done(1))


# ---------------------------------------------------------------------- item 16: stay silent


async def test_an_off_channel_shows_nobody_the_question(rig: Rig) -> None:
    assert "I'm off" in await say(rig, "off", user=ADMIN, name="off")
    assert await say(rig, "what is SOLAR?", user="U0ALICE", name="q") == texts.CHANNEL_DISABLED
    assert await say(rig, "--private and now?", user="U0ALICE", name="p") == texts.CHANNEL_DISABLED
    # An empty mention gets no public hint there either.
    assert await signed_event(rig, mention("", ts="1690004000.000001")) == 200
    await asyncio.sleep(0.3)
    assert rig.fake.calls_to("chat.postMessage") == []
    assert rig.fake.calls_to("chat.delete") == [] and rig.fake.messages == {}
    assert rig.repository.jobs() == []


async def test_a_conversation_waiting_for_a_human_shows_nobody_the_next_question(
    rig: Rig,
) -> None:
    await rig.command("talk to a human", name="first")
    await rig.until(
        lambda: any("asked for a human" in m.text for m in rig.fake.thread("C0GENERAL", None))
    )
    posted = len(rig.fake.calls_to("chat.postMessage"))
    waiting = await say(rig, "what now?", user="U0BOB", name="second")
    assert "waiting for a human" in waiting
    await asyncio.sleep(0.3)
    assert len(rig.fake.calls_to("chat.postMessage")) == posted  # nothing new in the channel
    assert rig.fake.calls_to("chat.delete") == []
    assert rig.engine.requests == []
    # Other channels are still answered publicly.
    await rig.command("elsewhere?", channel="C0OTHER", name="other")
    await rig.until(lambda: rig.jobs_done(1))
    assert rig.fake.thread("C0OTHER", None)[0].text.startswith("<@U0ALICE> asked: elsewhere?")


# ---------------------------------------------------------------------- fuzzing


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[tuple[LoopThread, Rig]]:
    thread = LoopThread()

    async def open_rig() -> tuple[FakeSlack, Any, Rig]:
        slack = FakeSlack()
        await slack.start()
        opened = start_rig(tmp_path, slack)
        return slack, opened, await opened.__aenter__()

    slack, opened, rig = thread.run(open_rig())
    try:
        yield thread, rig
    finally:
        thread.run(opened.__aexit__(None, None, None))
        thread.run(slack.stop())
        thread.close()


def slack_event() -> st.SearchStrategy[dict[str, Any]]:
    kinds = st.sampled_from(["app_mention", "message", "reaction_added", "reaction_removed"])
    field = hostile_text | json_values
    return st.fixed_dictionaries(
        {"type": kinds},
        optional={
            "user": field,
            "text": field,
            "ts": field,
            "thread_ts": field,
            "channel": field,
            "channel_type": st.sampled_from(["im", "channel"]) | field,
            "subtype": field,
            "reaction": field,
            "item": st.fixed_dictionaries(
                {"type": st.just("message")}, optional={"channel": field, "ts": field}
            )
            | field,
            "item_user": field,
        },
    )


def form_safe(text: str) -> str:
    """A form body is percent-encoded UTF-8: a lone surrogate cannot be sent in one."""
    return text.encode("utf-8", "replace").decode("utf-8")


def slash_command(response_url: str) -> st.SearchStrategy[bytes]:
    prefixes = st.sampled_from(["", "help", "status", "--private ", "talk to a human ", "off"])
    text = st.builds(lambda prefix, rest: prefix + rest, prefixes, hostile_text)
    field = hostile_text.map(form_safe)
    return st.builds(
        lambda text, user, channel, trigger, team: command_body(
            form_safe(text),
            response_url=response_url,
            user=user,
            channel=channel,
            trigger_id=trigger,
            team=team,
        ).encode(),
        text,
        field,
        field,
        field,
        st.just(TEAM) | field,
    )


def event_bytes(event: dict[str, Any]) -> bytes:
    return event_body(event).encode()


async def commands_handled(rig: Rig) -> None:
    """Wait for the slash commands acknowledged so far to be handled (stored or refused)."""
    await asyncio.gather(*rig.adapter._background, return_exceptions=True)


@pytest.mark.slow
def test_fuzzed_requests_never_get_a_5xx_a_traceback_or_a_stored_refusal(
    hosted: tuple[LoopThread, Rig], caplog: pytest.LogCaptureFixture
) -> None:
    thread, rig = hosted
    caplog.set_level(logging.INFO)

    bodies = st.one_of(
        slack_event().map(event_bytes),
        slash_command(rig.fake.response_url("fuzz")),
        json_values.map(lambda value: json.dumps(value).encode()),
        raw_bodies,
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        body=bodies,
        headers=http_headers(),
        content_type=st.sampled_from([JSON, FORM, "text/plain", ""]),
        sign=st.sampled_from(["valid", "valid", "none", "stale", "forged"]),
    )
    def one_request(body: bytes, headers: dict[str, str], content_type: str, sign: str) -> None:
        thread.run(commands_handled(rig))  # earlier commands store after their ack
        before = len(rig.repository.jobs())
        sent = {**headers}
        if content_type:
            sent["Content-Type"] = content_type
        if sign == "valid":
            sent.update(signed(body))
        elif sign == "stale":
            sent.update(signed(body, timestamp=str(int(time.time()) - 600)))
        elif sign == "forged":
            sent.update({**signed(body), "X-Slack-Signature": "v0=" + "0" * 64})
        status, answer = thread.run(post(rig.session, rig.url, body, sent))
        seen.add(status)
        assert status < 500, answer
        if sign != "valid" or status >= 400:
            assert status in (400, 401) or sign == "valid"
            assert len(rig.repository.jobs()) == before  # refused: nothing stored
        records = caplog.records
        assert tracebacks_at_error(records) == [], records
        caplog.clear()

    seen: set[int] = set()
    one_request()
    assert {200, 400, 401} <= seen  # the fuzzer got past the door too, not only refused
    thread.run(answered(rig, "still there?", "1690005000.000001"))
    thread.run(
        rig.until(
            lambda: (
                [m.text for m in rig.fake.thread("C0GENERAL", "1690005000.000001")]
                == ["You said: Alice: still there?"]
            )
        )
    )
