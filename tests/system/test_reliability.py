"""Delivery under platform faults, through the real worker and ``adapters.webhook`` over HTTP to the
loopback platform of ``tests/support/webhook_platform.py`` (no mocks between the worker and the socket)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from adapters.discord import DiscordAdapter, DiscordOptions
from adapters.webhook import WebhookAdapter, WebhookOptions
from bot import texts
from bot.delivery import ReplyTarget
from bot.generation.fake import FakeEngine
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import ConversationKey, Incoming, JobStatus
from bot.splitting import split_message
from bot.worker import APOLOGY_PENDING, Worker, WorkerOptions
from storage.repository import Repository
from tests.support.discord_fake import FakeDiscord
from tests.support.rig import ServiceRig, quick_worker_options
from tests.support.webhook_platform import WebhookPlatform


@dataclass(kw_only=True)
class WebRig(ServiceRig[WebhookAdapter, FakeEngine]):
    """The service rig around the webhook adapter, with the loopback platform it delivers to."""

    platform: WebhookPlatform

    async def send(self, text: str, message_id: str, channel: str = "c1") -> int:
        result = await self.intake.submit(
            Incoming(
                platform="webhook",
                channel=channel,
                author_id="u1",
                text=text,
                message_id=message_id,
            )
        )
        assert result is not None and result.created
        return result.job_id

    async def until(
        self, condition: Callable[[], bool], *, within: float = 20.0, poll: float = 0.02
    ) -> None:
        await super().until(condition, within=within, poll=poll)


@pytest.fixture
async def web(sqlite_url: str, request: pytest.FixtureRequest) -> AsyncIterator[WebRig]:
    overrides: dict[str, object] = getattr(request, "param", {})
    platform = WebhookPlatform(hang_seconds=1.0, retry_after=0.3)
    url = await platform.start()
    values = {"system_prompt": "test", "concurrency": None, "poll_seconds": 0.02, **overrides}
    rig = await WebRig.start(
        WebhookAdapter(WebhookOptions(url=url, timeout=0.3, edit_interval=0.0)),
        repository=Repository.open(sqlite_url),
        engine=FakeEngine(),
        options=quick_worker_options(**values),
        platform=platform,
    )
    yield rig
    await rig.stop(drain=1)
    await platform.stop()
    rig.close()


async def test_a_post_applied_by_the_platform_but_unanswered_is_not_posted_twice(
    web: WebRig,
) -> None:
    """The one window no database write can close (the platform created the message, the answer
    never arrived): the retry's idempotency key makes the platform return that same message."""
    web.platform.apply_then_fail_next = 1
    job_id = await web.send("hello there", "1")
    await web.until(lambda: web.repository.count_jobs() == 0)
    record = web.repository.job(job_id)
    assert record is not None and record.status is JobStatus.DONE and record.attempts == 2
    assert web.platform.replayed_keys == 1
    (reply,) = web.platform.replies()[job_id]
    assert reply.text == "You said: hello there"
    assert [m.kind for m in web.platform.messages.values()] == ["reply"]  # one message, ever
    assert record.reply_message_ids == (reply.id,)


@pytest.mark.parametrize(
    "web",
    [{"max_attempts": 50, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2}],
    indirect=True,
)
@pytest.mark.parametrize(("kind", "error"), [("5xx", "HTTP 503"), ("timeout", "request timed out")])
async def test_server_errors_and_timeouts_are_retried_and_the_reply_arrives_once(
    web: WebRig, kind: str, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    web.platform.outage(kind, 0.5)
    job_id = await web.send("through the storm", "1")
    await web.until(lambda: web.repository.count_jobs() == 0)
    record = web.repository.job(job_id)
    assert record is not None and record.status is JobStatus.DONE
    assert record.attempts > 1 and web.platform.failed_requests[kind] > 0
    (reply,) = web.platform.replies()[job_id]
    assert reply.text == "You said: through the storm"
    assert f"delivery failed: webhook {error}; retrying" in caplog.text
    assert record.error is None  # cleared once delivered


@pytest.mark.parametrize("web", [{"max_attempts": 3}], indirect=True)
async def test_an_outage_backs_off_honours_retry_after_fails_and_apologises_once_back(
    web: WebRig,
) -> None:
    web.platform.outage("429", 60)  # Retry-After: 0.3 s; our own backoff would be 0.01-0.05 s
    job_id = await web.send("anyone there?", "1")
    # Three attempts, then the job is given up; the apology cannot be posted either, so the job
    # waits (queued, error stored) instead of dropping the apology.
    await web.until(lambda: len(web.platform.request_times) >= 5)
    record = web.repository.job(job_id)
    assert record is not None and record.status is not JobStatus.FAILED
    gaps = [
        b - a
        for a, b in zip(web.platform.request_times, web.platform.request_times[1:], strict=False)
    ]
    assert min(gaps) >= 0.29, gaps  # every retry waited at least Retry-After
    assert web.platform.notices() == []
    await web.until(lambda: (web.repository.job(job_id) or record).attempts > 3)
    assert APOLOGY_PENDING in ((web.repository.job(job_id) or record).error or "")

    web.platform.end_outage()
    await web.until(lambda: web.repository.count_jobs() == 0)
    final = web.repository.job(job_id)
    assert final is not None and final.status is JobStatus.FAILED
    assert final.error == "delivery failed: webhook HTTP 429"
    (notice,) = web.platform.notices()
    assert notice.text == texts.FAILED_REPLY and notice.channel == "c1"
    assert web.platform.replies() == {}


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    worker = Worker(
        repository=None,  # type: ignore[arg-type]
        engine=FakeEngine(),
        adapters={},
        options=WorkerOptions(
            system_prompt="", max_new_tokens=10, retry_base_seconds=2.0, retry_max_seconds=60.0
        ),
    )
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (10, 60.0)]:
        delays = [worker._backoff(attempt, None) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.2  # jittered, not lock-step
    assert worker._backoff(1, 30.0) == 30.0  # Retry-After wins when longer


async def test_a_discord_reply_whose_post_was_never_recorded_is_not_posted_twice(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """Discord's side of the crash window: every attempt sends the same nonce for the same reply
    part (with ``enforce_nonce``), so a later attempt gets the message the dead one posted, and
    brings its text up to date."""
    fake = FakeDiscord()
    fake.add_guild(10, "home")
    fake.add_channel(10, 100, "general")
    await fake.start()
    fake.point_discord_py_here(monkeypatch)
    repository = Repository.open(sqlite_url)
    adapter = DiscordAdapter(DiscordOptions(token=fake.token, ingress=False, edit_interval=0.0))
    await adapter.start(Intake(repository))
    try:
        target = ReplyTarget(
            job_id=7,
            conversation=ConversationKey(platform="discord", workspace="10", channel="100"),
            reply_target={"channel_id": "100", "message_id": "555"},
            job_key="0123456789abcdef",  # what the worker passes: the nonces are made from it
        )
        first = await adapter.open_reply(target)
        await first.update("a partial answer")
        assert len(first.message_ids) == 1
        # The worker dies here, before recording the id: the next attempt knows of no message.
        second = await adapter.open_reply(target)
        long_answer = "word " * 500  # two messages: part 1 is new, part 0 is the same message
        ids = await second.finish(long_answer)
        assert ids[0] == first.message_ids[0] and len(ids) == 2
        contents = [m["content"] for m in fake.bot_messages(100)]
        assert contents == split_message(long_answer, limit=2000)
        assert len(fake.bot_messages(100)) == 2
    finally:
        await adapter.stop()
        await fake.close()
        repository.close()


async def test_a_webhook_message_deleted_by_someone_is_replaced_not_lost(web: WebRig) -> None:
    target = ReplyTarget(
        job_id=5, conversation=ConversationKey(platform="webhook", channel="c"), reply_target={}
    )
    stream = await web.adapter.open_reply(target)
    await stream.update("first words")
    (posted,) = stream.message_ids
    web.platform.messages[posted].deleted = True  # a moderator removed it
    ids = await stream.finish("first words and the rest")
    assert len(ids) == 1 and ids[0] != posted  # a new key: not the deleted message again
    assert web.platform.messages[ids[0]].text == "first words and the rest"


async def test_webhook_ingress_queues_dedupes_refuses_and_checks_the_secret(
    sqlite_url: str,
) -> None:
    platform = WebhookPlatform(secret="s3cret")
    url = await platform.start()
    repository = Repository.open(sqlite_url)
    adapter = WebhookAdapter(WebhookOptions(url=url, secret="s3cret", port=0, edit_interval=0.0))
    rig = await ServiceRig.start(
        adapter,
        repository=repository,
        engine=FakeEngine(),
        options=WorkerOptions(system_prompt="", max_new_tokens=50, poll_seconds=0.02),
        limits=Limits(LimitSettings(max_message_chars=20)),
    )
    incoming = f"http://127.0.0.1:{adapter.port}/incoming"
    auth = {"Authorization": "Bearer s3cret"}
    message = {"channel": "c9", "author_id": "u1", "text": "hi 東京", "message_id": "m1"}
    try:
        async with aiohttp.ClientSession() as http:

            async def send(body: object, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
                async with http.post(incoming, json=body, headers=headers) as response:
                    return response.status, await response.json()

            assert (await send(message, {}))[0] == 401
            assert (await send(message, {"Authorization": "Bearer wrong"}))[0] == 401
            status, body = await send({"channel": "c9"}, auth)
            assert status == 400 and "author_id" in body["error"]
            status, body = await send(message, auth)
            assert status == 202 and body["status"] == "queued"
            again = await send(message, auth)
            assert again == (202, {"status": "duplicate", "job_id": body["job_id"]})
            long = {**message, "text": "x" * 21, "message_id": "m2"}
            assert await send(long, auth) == (429, {"status": "refused", "reason": "too_long"})
            async with asyncio.timeout(10):
                while repository.count_jobs() > 0 or not platform.replies():
                    await asyncio.sleep(0.02)
        (reply,) = platform.replies()[body["job_id"]]
        assert reply.text == "You said: hi 東京" and reply.channel == "c9"
        (notice,) = platform.notices()
        assert notice.text == texts.LIMIT_TOO_LONG.format(length=21, limit=20)
        assert len(repository.jobs()) == 1  # the refused message was not stored
    finally:
        await rig.stop(drain=1)
        await platform.stop()
        rig.close()
