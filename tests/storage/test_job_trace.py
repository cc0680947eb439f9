"""Migration 0002 and the reply trace (prompt tokens, generation time, model id) on SQLite and the
real PostgreSQL server."""

from __future__ import annotations

from sqlalchemy import inspect

from bot.records import Incoming, JobStatus, JobTrace
from storage import database
from storage.repository import Repository

TRACE_COLUMNS = {"prompt_tokens", "generation_ms", "model_id"}


def incoming(message_id: str) -> Incoming:
    return Incoming(
        platform="fake", channel="c1", author_id="u1", text="hello", message_id=message_id
    )


def columns(engine: object, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}  # type: ignore[arg-type]


def test_migration_0002_adds_the_trace_to_existing_jobs_and_goes_down(database_url: str) -> None:
    engine = database.create_db_engine(database_url)
    try:
        # A job from before the upgrade: stored by this code, then migrated down to 0001 (today's
        # code needs today's schema to write).
        database.upgrade(engine)
        created = Repository(engine).enqueue(incoming("before"))
        assert created is not None
        database.downgrade(engine, "0001")
        assert not TRACE_COLUMNS & columns(engine, "jobs")

        database.upgrade(engine, revision="0002")
        assert database.current_revision(engine) == "0002"
        assert columns(engine, "jobs") >= TRACE_COLUMNS
        job = Repository(engine).job(created.job_id)
        assert job is not None and job.status is JobStatus.QUEUED
        assert (job.prompt_tokens, job.generation_ms, job.model_id) == (None, None, None)

        database.downgrade(engine, "0001")
        assert not TRACE_COLUMNS & columns(engine, "jobs")
        assert Repository(engine).count_jobs() == 1  # the data survived both ways
        database.upgrade(engine)
    finally:
        engine.dispose()


def test_complete_stores_the_trace(repository: Repository) -> None:
    assert repository.enqueue(incoming("m1")) is not None
    [job] = repository.claim(worker_id="w1", limit=1, lease_seconds=60)
    assert job.enqueued_at is not None
    trace = JobTrace(prompt_tokens=57, generation_ms=812, model_id="upstage/SOLAR")
    assert repository.complete(
        job, reply_text="hi", reply_message_ids=["p1"], token_count=2, trace=trace
    )
    record = repository.job(job.id)
    assert record is not None
    assert (record.prompt_tokens, record.generation_ms, record.model_id) == (
        57,
        812,
        "upstage/SOLAR",
    )


def test_a_reply_delivered_by_a_later_attempt_keeps_the_trace_of_its_generation(
    repository: Repository,
) -> None:
    assert repository.enqueue(incoming("m1")) is not None
    [first] = repository.claim(worker_id="w1", limit=1, lease_seconds=60)
    trace = JobTrace(prompt_tokens=12, generation_ms=345, model_id="m")
    # Generated, but the platform was down: the text and the trace are kept for the retry.
    assert repository.record_reply_progress(
        first, reply_message_ids=[], reply_text="the answer", trace=trace
    )
    assert repository.retry_later(first, error="delivery failed", delay_seconds=0)
    [second] = repository.claim(worker_id="w2", limit=1, lease_seconds=60)
    assert second.reply_text == "the answer"
    assert repository.complete(
        second, reply_text="the answer", reply_message_ids=["p1"], token_count=2, trace=None
    )
    record = repository.job(second.id)
    assert record is not None and record.status is JobStatus.DONE
    assert (record.prompt_tokens, record.generation_ms, record.model_id) == (12, 345, "m")
    assert repository.job_counts() == {JobStatus.DONE: 1}
