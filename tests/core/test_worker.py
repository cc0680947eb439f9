"""The worker through its seams: real SQLite queue, the shipped FakeEngine and FakeAdapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.fake import FakeAdapter
from bot import texts
from bot.generation.engine import GenerationRequest
from bot.generation.fake import FakeEngine, echo_reply
from bot.intake import Intake
from bot.records import ChannelConfig, ConversationKey, JobStatus
from bot.service import Service, build_engine, worker_options
from bot.settings import load_settings
from bot.splitting import truncate_at_word
from bot.worker import Worker
from storage.repository import Repository
from storage.schema import utcnow
from tests.support.rig import ServiceRig, quick_worker_options


class Rig(ServiceRig[FakeAdapter, FakeEngine]):
    """The service rig around the shipped FakeAdapter."""


options = quick_worker_options


async def start_rig(
    url: str, *, engine: FakeEngine | None = None, **worker_overrides: object
) -> Rig:
    return await Rig.start(
        FakeAdapter(platform="fake"),
        repository=Repository.open(url),
        engine=engine or FakeEngine(),
        options=options(**worker_overrides),
    )


@pytest.fixture
async def rig(sqlite_url: str) -> AsyncIterator[Rig]:
    rig = await start_rig(sqlite_url)
    yield rig
    await rig.stop(drain=1)
    rig.close()


async def test_a_message_gets_one_streamed_reply_and_both_turns_are_stored(rig: Rig) -> None:
    rig.engine._replies = ["Hello there, how can I help you today?"]
    await rig.adapter.receive(channel="c1", text="hi bot", message_id="1")
    await rig.until(lambda: rig.pending() == 0)
    (reply,) = rig.adapter.messages.values()
    assert reply.text == "Hello there, how can I help you today?"
    assert len(reply.history) > 1  # streamed: posted early, then edited as text arrived
    assert all(reply.text.startswith(partial) for partial in reply.history)
    key = ConversationKey(platform="fake", channel="c1")
    stored = [(m.role.value, m.text) for m in rig.repository.messages(key)]
    assert stored == [("user", "hi bot"), ("assistant", "Hello there, how can I help you today?")]
    assert rig.repository.messages(key)[1].platform_message_id == reply.id
    assert rig.engine.prompts[0].endswith("### User:\nhi bot\n\n### Assistant:\n")
    assert rig.engine.prompts[0].startswith("### System:\nYou are a test bot.\n\n")


async def test_many_channels_run_concurrently_and_keep_their_own_history(sqlite_url: str) -> None:
    rig = await start_rig(sqlite_url, engine=FakeEngine(delay_per_chunk=0.01), concurrency=8)
    try:
        for n in range(3):
            for channel in ("a", "b", "c", "d"):
                await rig.adapter.receive(
                    channel=channel, text=f"{channel}{n}", message_id=f"{channel}{n}"
                )
        await rig.until(lambda: rig.pending() == 0)
        for channel in ("a", "b", "c", "d"):
            replies = rig.adapter.replies(channel)
            assert replies == [f"You said: {channel}{n}" for n in range(3)]
            key = ConversationKey(platform="fake", channel=channel)
            assert [m.text for m in rig.repository.messages(key)] == [
                text for n in range(3) for text in (f"{channel}{n}", f"You said: {channel}{n}")
            ]
        # The third prompt of a channel carries that channel's history and nothing else.
        third_a = next(
            p for p in rig.engine.prompts if p.endswith("### User:\na2\n\n### Assistant:\n")
        )
        assert "You said: a1" in third_a and "b0" not in third_a
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


async def test_a_duplicated_event_gets_one_reply(rig: Rig) -> None:
    first = await rig.adapter.receive(channel="c1", text="hi", message_id="42")
    second = await rig.adapter.receive(channel="c1", text="hi", message_id="42")
    assert first is not None and second is not None
    assert first.created and not second.created
    await rig.until(lambda: rig.pending() == 0)
    await asyncio.sleep(0.2)
    assert len(rig.adapter.messages) == 1 and len(rig.engine.requests) == 1


async def test_delivery_outage_is_retried_and_the_reply_arrives_once(rig: Rig) -> None:
    rig.adapter.fail_next(1)
    await rig.adapter.receive(channel="c1", text="hi", message_id="1")
    await rig.until(lambda: rig.pending() == 0)
    (job,) = rig.repository.jobs()
    assert job.status is JobStatus.DONE and job.attempts == 2
    assert rig.adapter.replies("c1") == ["You said: hi"]
    assert len(rig.adapter.messages) == 1


async def test_a_reply_generated_before_an_outage_is_not_generated_again(rig: Rig) -> None:
    # The first post succeeds, then every edit fails for a while: generation finishes anyway, the
    # text is saved with the job, and the retry only delivers it (no second engine request).
    rig.engine._replies = ["one two three four five"]

    original_update = rig.adapter.edit
    failures = {"left": 2}

    def flaky_edit(message_id: str, text: str) -> None:
        if failures["left"]:
            failures["left"] -= 1
            from bot.errors import DeliveryError

            raise DeliveryError("edit failed", retry_after=0.01)
        original_update(message_id, text)

    rig.adapter.edit = flaky_edit  # type: ignore[method-assign]
    await rig.adapter.receive(channel="c1", text="count", message_id="1")
    await rig.until(lambda: rig.pending() == 0)
    assert len(rig.engine.requests) == 1
    assert rig.adapter.replies("c1") == ["one two three four five"]
    assert len(rig.adapter.messages) == 1  # the retry edited the message posted the first time


async def test_giving_up_marks_the_job_failed_and_apologises(rig: Rig) -> None:
    rig.engine.fail_next(3)
    await rig.adapter.receive(channel="c1", text="hi", message_id="1")
    await rig.until(lambda: rig.pending() == 0)
    (job,) = rig.repository.jobs()
    assert job.status is JobStatus.FAILED and job.attempts == 3
    assert job.error is not None and "injected engine failure" in job.error
    assert rig.adapter.notices == [
        (ConversationKey(platform="fake", channel="c1"), texts.FAILED_REPLY)
    ]
    # The conversation is not stuck: the next message is answered.
    await rig.adapter.receive(channel="c1", text="again", message_id="2")
    await rig.until(lambda: rig.pending() == 0)
    assert rig.adapter.replies("c1") == ["You said: again"]


async def test_a_channel_system_prompt_replaces_the_default(rig: Rig) -> None:
    rig.repository.set_channel_config(
        platform="fake", workspace="", channel="c1", config=ChannelConfig(system_prompt="Be brief.")
    )
    await rig.adapter.receive(channel="c1", text="hi", message_id="1")
    await rig.until(lambda: rig.pending() == 0)
    assert rig.engine.prompts[0].startswith("### System:\nBe brief.\n\n### User:")


async def test_a_disabled_channel_stores_nothing(rig: Rig) -> None:
    rig.repository.set_channel_config(
        platform="fake", workspace="", channel="off", config=ChannelConfig(enabled=False)
    )
    assert await rig.adapter.receive(channel="off", text="hi", message_id="1") is None
    assert rig.repository.jobs() == []


async def test_a_too_long_newest_message_is_truncated_with_a_notice(sqlite_url: str) -> None:
    rig = await start_rig(sqlite_url, engine=FakeEngine(context_window=400), max_new_tokens=100)
    try:
        await rig.adapter.receive(channel="c1", text="x" * 1000, message_id="1")
        await rig.until(lambda: rig.pending() == 0)
        (reply,) = rig.adapter.replies("c1")
        assert reply.startswith(texts.TRUNCATED_NOTICE)
        assert len(rig.engine.requests[0].prompt_ids) <= 300
        key = ConversationKey(platform="fake", channel="c1")
        assert rig.repository.messages(key)[0].text == "x" * 1000  # the stored turn is whole
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


async def test_a_job_whose_worker_died_is_completed_exactly_once(sqlite_url: str) -> None:
    repository = Repository.open(sqlite_url)
    intake = Intake(repository)
    adapter = FakeAdapter(platform="fake")
    await adapter.start(intake)
    await adapter.receive(channel="c1", text="hi", message_id="1")
    # A worker claims the job and dies: it never renews, finishes or releases it.
    (dead,) = repository.claim(worker_id="dead", limit=1, lease_seconds=0.3)
    repository.close()

    rig = await start_rig(sqlite_url, lease_seconds=1.0)
    rig.adapter = rig.worker._adapters["fake"]  # type: ignore[assignment]
    try:
        await rig.until(lambda: rig.pending() == 0)
        (job,) = rig.repository.jobs()
        assert job.status is JobStatus.DONE and job.attempts == 2 and job.worker_id != "dead"
        assert rig.adapter.replies("c1") == ["You said: hi"]
        # The dead worker coming back cannot record a second reply.
        assert not rig.repository.complete(
            dead, reply_text="zombie", reply_message_ids=[], token_count=1
        )
        key = ConversationKey(platform="fake", channel="c1")
        assert [m.text for m in rig.repository.messages(key)] == ["hi", "You said: hi"]
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


async def test_the_lease_is_renewed_while_a_long_reply_is_generated(sqlite_url: str) -> None:
    slow = FakeEngine(replies=["word " * 30], delay_per_chunk=0.05)  # ~1.5 s, lease 0.5 s
    rig = await start_rig(sqlite_url, engine=slow, lease_seconds=0.5)
    try:
        await rig.adapter.receive(channel="c1", text="hi", message_id="1")
        await rig.until(lambda: rig.pending() == 0)
        (job,) = rig.repository.jobs()
        assert job.status is JobStatus.DONE and job.attempts == 1
        # Nobody could steal it mid-way: a claim at any time during the run found nothing.
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


async def test_stop_releases_running_jobs_and_leaves_nothing_running(sqlite_url: str) -> None:
    slow = FakeEngine(replies=["word " * 200], delay_per_chunk=0.05)
    rig = await start_rig(sqlite_url, engine=slow)
    await rig.adapter.receive(channel="c1", text="hi", message_id="1")
    await rig.until(lambda: rig.worker.active_jobs == 1)
    await asyncio.sleep(0.2)
    await rig.worker.stop(drain_seconds=0.1)
    await rig.task
    (job,) = rig.repository.jobs()
    assert job.status is JobStatus.QUEUED and job.worker_id is None and job.attempts == 0
    assert rig.repository.count_jobs(statuses=[JobStatus.RUNNING]) == 0
    rig.repository.close()


async def test_stop_drains_jobs_that_finish_within_the_grace_period(sqlite_url: str) -> None:
    rig = await start_rig(sqlite_url, engine=FakeEngine(delay_per_chunk=0.05))
    await rig.adapter.receive(channel="c1", text="drain me", message_id="1")
    await rig.until(lambda: rig.worker.active_jobs == 1)
    await rig.worker.stop(drain_seconds=10)
    await rig.task
    (job,) = rig.repository.jobs()
    assert job.status is JobStatus.DONE
    assert rig.adapter.replies("c1") == ["You said: drain me"]
    rig.repository.close()


async def test_startup_requeues_jobs_left_running_by_a_crash(sqlite_url: str) -> None:
    repository = Repository.open(sqlite_url)
    adapter = FakeAdapter(platform="fake")
    await adapter.start(Intake(repository))
    await adapter.receive(channel="c1", text="hi", message_id="1")
    repository.claim(
        worker_id="crashed", limit=1, lease_seconds=1, now=utcnow() - timedelta(seconds=5)
    )
    repository.close()
    rig = await start_rig(sqlite_url)
    try:
        await rig.until(lambda: rig.pending() == 0)
        assert rig.worker._adapters["fake"].replies("c1") == ["You said: hi"]  # type: ignore[attr-defined]
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


class CountingEngine(FakeEngine):
    """Counts the chunks the worker actually took from the stream."""

    taken = 0

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[str, None]:
        async for chunk in super().stream(request):
            self.taken += 1
            yield chunk


async def test_a_channels_reply_length_stops_generation_and_cuts_at_a_word(
    sqlite_url: str,
) -> None:
    long_reply = " ".join(f"word{n}" for n in range(400))
    engine = CountingEngine(replies=[long_reply])
    rig = await start_rig(sqlite_url, engine=engine, max_new_tokens=1000)
    try:
        rig.repository.update_channel_config(
            platform="fake", workspace="", channel="c1", changes={"max_reply_chars": 40}
        )
        await rig.adapter.receive(channel="c1", text="talk a lot", message_id="1")
        await rig.until(lambda: rig.pending() == 0)
        (reply,) = rig.adapter.messages.values()
        assert (
            reply.text == truncate_at_word(long_reply, 40) == "word0 word1 word2 word3 word4 word5…"
        )
        assert all(len(shown) <= 40 for shown in reply.history)  # never shown longer
        assert engine.taken <= 8  # it stopped right after the 41st character, not at 400 words
        assert engine.health().active_requests == 0  # the engine's request was closed
        record = rig.repository.jobs()[0]
        assert record.reply_text == reply.text
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


# ---------------------------------------------------------------- concurrency follows the engine


def long_reply(prompt: str) -> str:
    """30 words, the question's words among them, so each reply is known to be its own."""
    return echo_reply(prompt) + " " + " ".join(f"w{n}" for n in range(27))


async def test_questions_arriving_together_all_start_in_the_engines_batch_by_default(
    tmp_path: Path,
) -> None:
    """With SOLARBOT_WORKER_CONCURRENCY unset the worker takes as many jobs as the engine batches:
    32 questions waiting at once all get their first token before any reply is complete (in
    decode steps of a batched fake GPU, not in seconds). The old fixed default of 8 ran them in
    four waves, each waiting a whole reply for its first token."""
    questions = 32
    settings = load_settings(environ={"SOLARBOT_DATA_DIR": str(tmp_path)})
    assert settings.worker_concurrency is None
    repository = Repository.open(settings.resolved_database_url())
    engine = FakeEngine(script=long_reply, token_delay=0.05, batch_capacity=48)
    adapter = FakeAdapter()
    service = Service(settings=settings, repository=repository, engine=engine, adapters=[adapter])
    await adapter.start(service.intake)
    for n in range(questions):  # all waiting in the queue when the worker starts
        queued = await adapter.receive(
            channel=f"c{n}", text=f"question {n}", message_id=str(n), author_id=f"u{n}"
        )
        assert queued is not None
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(120):
            while repository.count_jobs() > 0:
                await asyncio.sleep(0.05)
        assert service.worker is not None and service.worker.concurrency == 48
        first, last = engine.first_token_step, engine.last_token_step
        assert len(first) == questions and engine.peak_active == questions
        assert max(first.values()) < min(last.values()), (
            sorted(first.values()),
            min(last.values()),
        )
        replies = {m.conversation.channel: m.text for m in adapter.messages.values()}
        assert replies == {
            f"c{n}": long_reply(f"### User:\nquestion {n}\n\n### Assistant:\n")
            for n in range(questions)
        }
    finally:
        service.stopping.set()
        async with asyncio.timeout(30):
            await task
        repository.close()


@pytest.mark.parametrize(
    ("setting", "capacity", "expected"),
    [(None, 48, 48), (0, 48, 48), (8, 48, 8), (48, 48, 48), (200, 48, 48), (3, 1, 1)],
)
def test_worker_concurrency_follows_the_engine_and_is_capped_by_it(
    setting: int | None, capacity: int, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    options = worker_options(
        load_settings(
            environ={} if setting is None else {"SOLARBOT_WORKER_CONCURRENCY": str(setting)}
        )
    )
    worker = Worker(
        repository=None,  # type: ignore[arg-type]  # not touched before run()
        engine=FakeEngine(batch_capacity=capacity),
        adapters={},
        options=options,
    )
    assert worker.concurrency == expected
    capped = [r for r in caplog.records if "SOLARBOT_WORKER_CONCURRENCY" in r.getMessage()]
    assert bool(capped) == (setting is not None and setting > capacity)


@pytest.mark.parametrize("engine", ["fake", "openai", "local", "static"])
def test_every_engine_says_how_many_requests_it_runs_at_once(engine: str) -> None:
    """What the worker's default concurrency asks; SOLARBOT_MAX_ACTIVE_REQUESTS sets it (before
    start: the configured value; the local engines then report what they really admitted)."""
    environ = {"SOLARBOT_ENGINE": engine, "SOLARBOT_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert build_engine(load_settings(environ=environ)).max_concurrent_requests >= 16
    environ["SOLARBOT_MAX_ACTIVE_REQUESTS"] = "12"
    assert build_engine(load_settings(environ=environ)).max_concurrent_requests == 12


@pytest.mark.parametrize("kind", ["local", "static"])
async def test_started_local_engines_report_what_they_admit(
    kind: str, tiny_model_dir: Path
) -> None:
    """Once started, the local engines answer from the batch they really built (the admission
    limit / the static cache's slots), and a worker on them runs that many jobs."""
    from bot.generation.local import TransformersEngine
    from bot.generation.options import LocalEngineOptions
    from bot.generation.static import StaticCacheEngine

    options_ = LocalEngineOptions(model=str(tiny_model_dir), device="cpu", max_active_requests=3)
    engine: TransformersEngine | StaticCacheEngine = (
        TransformersEngine(options_) if kind == "local" else StaticCacheEngine(options_)
    )
    await engine.start()
    try:
        assert engine.max_concurrent_requests == 3
        if isinstance(engine, StaticCacheEngine):
            assert engine.slots == 3
        worker = Worker(
            repository=None,  # type: ignore[arg-type]  # not touched before run()
            engine=engine,
            adapters={},
            options=options(concurrency=None),
        )
        assert worker.concurrency == 3
    finally:
        await engine.close()
