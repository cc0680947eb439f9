"""The webhook ingress under attack: no listener without its secret, every malformed body a 400
with one clear line and nothing stored (SQLite and PostgreSQL alike), fuzzed with hypothesis."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.webhook import INGRESS_NEEDS_SECRET, WebhookAdapter, WebhookOptions
from bot.errors import ConfigError
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import ConversationKey
from bot.service import platform_adapters
from bot.settings import load_settings
from bot.storable import FIELD_LIMITS
from storage import schema
from storage.repository import Repository
from tests.support.ingress_fuzz import (
    LoopThread,
    deep_json,
    dumps,
    hostile_text,
    http_headers,
    json_values,
    raw_bodies,
    tracebacks_at_error,
)
from tests.support.processes import solarbot
from tests.support.webhook_platform import WebhookPlatform

SECRET = "s3cret"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def valid(message_id: str = "m1", **fields: Any) -> dict[str, Any]:
    return {"channel": "c1", "author_id": "u1", "text": "hello", "message_id": message_id, **fields}


# ---------------------------------------------------------------------- item 4: the secret


def test_an_ingress_without_its_secret_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    env = {
        "SOLARBOT_DATA_DIR": str(tmp_path),
        "SOLARBOT_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
        "SOLARBOT_WEBHOOK_PORT": "0",
        "SOLARBOT_WEBHOOK_HOST": "0.0.0.0",
    }
    for role in ("all", "adapters"):
        result = solarbot("run", "--engine", "fake", "--role", role, env=env, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last == f"solarbot: error: {INGRESS_NEEDS_SECRET}"
        assert last.startswith("solarbot: error: SOLARBOT_WEBHOOK_SECRET: required")


def test_delivery_without_a_listener_needs_no_secret() -> None:
    environ = {"SOLARBOT_WEBHOOK_URL": "http://127.0.0.1:9/hooks", "SOLARBOT_ENGINE": "fake"}
    with pytest.raises(ConfigError, match=r"^SOLARBOT_WEBHOOK_SECRET: required"):
        platform_adapters(load_settings(environ={**environ, "SOLARBOT_WEBHOOK_PORT": "0"}))
    with pytest.raises(ConfigError, match=r"^SOLARBOT_WEBHOOK_SECRET: required"):
        WebhookAdapter(WebhookOptions(url="http://127.0.0.1:9", port=0, secret=""))
    # A worker only delivers (no listener even with the port set); without a port, no listener.
    listening = load_settings(environ={**environ, "SOLARBOT_WEBHOOK_PORT": "0"})
    (worker,) = platform_adapters(listening, ingress=False)
    (egress,) = platform_adapters(load_settings(environ=environ))
    assert isinstance(worker, WebhookAdapter) and isinstance(egress, WebhookAdapter)
    (ingress,) = platform_adapters(
        load_settings(
            environ={**environ, "SOLARBOT_WEBHOOK_PORT": "0", "SOLARBOT_WEBHOOK_SECRET": "x"}
        )
    )
    assert isinstance(ingress, WebhookAdapter)


# ---------------------------------------------------------------------- item 8: the edge


@dataclass
class Ingress:
    repository: Repository
    adapter: WebhookAdapter
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.port}/incoming"

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        sent = {"Content-Type": "application/json", **AUTH, **(headers or {})}
        async with self.session.post(self.url, data=body, headers=sent) as response:
            text = await response.text()
            assert response.content_type == "application/json", text
            answer = json.loads(text)
            assert isinstance(answer, dict)
            return response.status, answer

    def stored(self) -> int:
        return len(self.repository.jobs())


@contextlib.asynccontextmanager
async def open_ingress(database_url: str) -> AsyncIterator[Ingress]:
    platform = WebhookPlatform(secret=SECRET)
    url = await platform.start()
    repository = Repository.open(database_url)
    adapter = WebhookAdapter(WebhookOptions(url=url, secret=SECRET, port=0, edit_interval=0.0))
    intake = Intake(
        repository,
        limits=Limits(
            LimitSettings(user_rate_per_minute=0, channel_rate_per_minute=0, channel_queue_limit=0)
        ),
    )
    intake.register(adapter)
    await adapter.start(intake)
    session = aiohttp.ClientSession()
    try:
        yield Ingress(repository, adapter, session)
    finally:
        await session.close()
        await adapter.stop()
        await platform.stop()
        repository.close()


@pytest.fixture
async def ingress(database_url: str) -> AsyncIterator[Ingress]:
    async with open_ingress(database_url) as value:
        yield value


TOO_LONG = {name: "x" * (limit + 1) for name, limit in FIELD_LIMITS.items()}
HOSTILE: list[tuple[str, bytes, str]] = [
    ("nul in text", dumps(valid(text="a\x00b")), "text: contains a NUL character"),
    ("nul in channel", dumps(valid(channel="c\x00")), "channel: contains a NUL character"),
    ("nul in author name", dumps(valid(author_name="\x00")), "author_name: contains a NUL"),
    ("nul in reply target", dumps(valid(reply_target={"k": "\x00"})), "contains a NUL"),
    ("lone surrogate", dumps(valid(text="\ud800")), "invalid JSON"),
    ("lone low surrogate", dumps(valid(author_id="u\udc00")), "invalid JSON"),
    ("raw surrogate bytes", b'{"text": "\xed\xa0\x80"}', "invalid JSON"),
    ("not UTF-8", b"\xff\xfe{}", "invalid JSON"),
    ("nested arrays", b"[" * 100_000 + b"]" * 100_000, "invalid JSON: recursion limit"),
    ("nested objects", deep_json(100_000), "invalid JSON: recursion limit"),
    ("deep reply target", dumps(valid(reply_target={"a": {"b": {"c": "d"}}})), "reply_target.a"),
    ("null channel", dumps(valid(channel=None)), "channel: Input should be a valid string"),
    ("object channel", dumps(valid(channel={"id": 1})), "channel: Input should be a valid string"),
    ("number id", dumps(valid(message_id=12)), "message_id: Input should be a valid string"),
    ("list text", dumps(valid(text=["hi"])), "text: Input should be a valid string"),
    ("null workspace", dumps(valid(workspace=None)), "workspace: Input should be a valid string"),
    ("channel too long", dumps(valid(channel=TOO_LONG["channel"])), "at most 128 characters"),
    ("id too long", dumps(valid(message_id=TOO_LONG["message_id"])), "at most 128 characters"),
    ("author too long", dumps(valid(author_id=TOO_LONG["author_id"])), "at most 128 characters"),
    ("name too long", dumps(valid(author_name=TOO_LONG["author_name"])), "at most 256"),
    ("thread too long", dumps(valid(thread=TOO_LONG["thread"])), "at most 128 characters"),
    ("space too long", dumps(valid(workspace=TOO_LONG["workspace"])), "at most 128 characters"),
    ("many targets", dumps(valid(reply_target={str(i): "v" for i in range(33)})), "at most 32"),
    ("blank channel", dumps(valid(channel="  ")), "empty channel"),
    ("blank text", dumps(valid(text=" \n")), "no text"),
    (
        "missing text",
        dumps({"channel": "c", "author_id": "u", "message_id": "m"}),
        "missing field text",
    ),
    ("a list", b"[]", "Input should be an object"),
    ("a string", b'"hi"', "Input should be an object"),
    ("empty", b"", "invalid JSON"),
    ("truncated", b'{"channel": "c"', "invalid JSON"),
]


@pytest.mark.parametrize(
    ("body", "error"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE]
)
async def test_a_malformed_message_is_a_400_with_one_clear_line_and_stores_nothing(
    ingress: Ingress, body: bytes, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, answer = await ingress.post(body)
    assert status == 400, answer
    assert error in answer["error"] and "\n" not in answer["error"]
    assert ingress.stored() == 0
    assert tracebacks_at_error(caplog.records) == []
    status, answer = await ingress.post(dumps(valid()))  # the service still answers
    assert (status, answer["status"]) == (202, "queued")


async def test_the_column_limits_are_the_schema_s(ingress: Ingress) -> None:
    columns = {
        "platform": schema.Conversation.__table__.c.platform,
        "workspace": schema.Conversation.__table__.c.workspace,
        "channel": schema.Conversation.__table__.c.channel,
        "thread": schema.Conversation.__table__.c.thread,
        "author_id": schema.Message.__table__.c.author_id,
        "author_name": schema.Message.__table__.c.author_name,
        "message_id": schema.Message.__table__.c.platform_message_id,
        "dedupe_key": schema.Job.__table__.c.dedupe_key,
    }
    assert {name: column.type.length for name, column in columns.items()} == dict(FIELD_LIMITS)
    # The longest accepted values are stored whole, on both databases.
    longest = valid(
        message_id="m" * 100,
        channel="c" * 128,
        thread="t" * 128,
        author_id="a" * 128,
        author_name="n" * 256,
        text="東京🙂\u202e" * 100,
    )
    status, answer = await ingress.post(dumps(longest))
    assert (status, answer["status"]) == (202, "queued")
    key = ConversationKey(platform="webhook", channel="c" * 128, thread="t" * 128)
    (message,) = ingress.repository.messages(key)
    assert (message.author_id, message.author_name) == ("a" * 128, "n" * 256)
    assert message.text == longest["text"]


async def test_ids_whose_key_outgrows_the_column_are_accepted_once(ingress: Ingress) -> None:
    """Workspace, channel and message id each within their columns but together longer than the
    dedupe key's: the key is hashed (``bot.dedupe``), so the message is stored, and a resend of
    the same message is still recognised as the same event."""
    body = dumps(valid(workspace="w" * 128, channel="c" * 128, message_id="m" * 100))
    answers = [await ingress.post(body) for _ in range(2)]
    assert [(status, answer["status"]) for status, answer in answers] == [
        (202, "queued"),
        (202, "duplicate"),
    ]
    assert answers[0][1]["job_id"] == answers[1][1]["job_id"]
    assert ingress.stored() == 1
    (job,) = ingress.repository.jobs()
    assert len(job.dedupe_key) <= 255


# ---------------------------------------------------------------------- fuzzing


@pytest.fixture
def hosted(database_url: str) -> Iterator[tuple[LoopThread, Ingress]]:
    thread = LoopThread()
    opened = open_ingress(database_url)
    ingress = thread.run(opened.__aenter__())
    try:
        yield thread, ingress
    finally:
        thread.run(opened.__aexit__(None, None, None))
        thread.close()


def message_like() -> st.SearchStrategy[dict[str, Any]]:
    """Bodies shaped like a message, any field hostile, missing or of the wrong type."""
    fields = ("channel", "author_id", "text", "message_id", "workspace", "thread", "author_name")
    return st.fixed_dictionaries(
        {},
        optional={
            **{name: hostile_text | json_values for name in fields},
            "reply_target": st.dictionaries(hostile_text, hostile_text, max_size=3) | json_values,
        },
    )


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(message_like().map(dumps), json_values.map(dumps), raw_bodies),
    headers=http_headers(),
    authorised=st.booleans(),
)
def test_fuzzed_requests_never_get_a_5xx_a_traceback_or_a_stored_refusal(
    hosted: tuple[LoopThread, Ingress],
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    headers: dict[str, str],
    authorised: bool,
) -> None:
    thread, ingress = hosted
    caplog.clear()
    before = ingress.stored()
    sent = {**headers, "Authorization": f"Bearer {SECRET}" if authorised else "Bearer nope"}
    status, answer = thread.run(ingress.post(body, sent))
    assert status < 500, answer
    if not authorised:
        assert status == 401
    if status != 202 or answer.get("status") != "queued":
        assert ingress.stored() == before  # refused, duplicate or disabled: nothing new stored
    assert tracebacks_at_error(caplog.records) == []
    if status == 202:
        assert answer["status"] in ("queued", "duplicate")
    # ...and the service still answers a valid request.
    fresh = dumps(valid(message_id=f"after-{before}-{len(body)}-{status}"))
    again, answer = thread.run(ingress.post(fresh))
    assert again == 202, answer
