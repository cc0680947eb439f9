"""The repository against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from bot.records import ChannelConfig, ConversationKey, Incoming, JobStatus, Role
from storage import database
from storage.repository import Repository
from storage.schema import utcnow


def incoming(channel: str, message_id: str, text: str = "hello", **extra: str) -> Incoming:
    return Incoming(
        platform="test", channel=channel, author_id="u1", text=text, message_id=message_id, **extra
    )


def test_migrations_create_every_table_and_go_down_cleanly(database_url: str) -> None:
    engine = database.create_db_engine(database_url)
    database.upgrade(engine)
    assert database.current_revision(engine) == database.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"conversations", "messages", "jobs", "channel_settings"} <= tables
    database.downgrade(engine, "base")
    assert not {"conversations", "messages", "jobs"} & set(inspect(engine).get_table_names())
    database.upgrade(engine)  # and up again: downgrade left nothing behind (e.g. PG enum types)
    assert database.current_revision(engine) == database.head_revision()
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(sqlite_url: str) -> None:
    repo = Repository.open(sqlite_url)
    with repo.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    repo.close()


def test_enqueue_stores_the_turn_and_the_job_and_is_idempotent(repository: Repository) -> None:
    first = repository.enqueue(incoming("c1", "m1", "héllo 🙂 你好"))
    again = repository.enqueue(incoming("c1", "m1", "héllo 🙂 你好"))
    assert first.created and not again.created
    assert (again.job_id, again.message_id) == (first.job_id, first.message_id)
    key = ConversationKey(platform="test", channel="c1")
    messages = repository.messages(key)
    assert [(m.role, m.text) for m in messages] == [(Role.USER, "héllo 🙂 你好")]
    assert [j.status for j in repository.jobs()] == [JobStatus.QUEUED]


def test_concurrent_duplicate_events_store_one_message(repository: Repository) -> None:
    results = []

    def submit() -> None:
        results.append(repository.enqueue(incoming("c1", "same")))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result.created for result in results) == 1
    assert len({result.job_id for result in results}) == 1
    assert len(repository.messages(ConversationKey(platform="test", channel="c1"))) == 1


def test_conversations_are_keyed_by_workspace_channel_and_thread(repository: Repository) -> None:
    a = repository.enqueue(incoming("c1", "1"))
    b = repository.enqueue(incoming("c1", "2", thread="t1"))
    c = repository.enqueue(incoming("c1", "3", workspace="w2"))
    d = repository.enqueue(incoming("c1", "4"))
    assert len({a.conversation_id, b.conversation_id, c.conversation_id}) == 3
    assert d.conversation_id == a.conversation_id


def test_claim_gives_one_job_per_conversation_in_order(repository: Repository) -> None:
    for n in range(3):
        repository.enqueue(incoming("c1", f"a{n}", f"c1 #{n}"))
        repository.enqueue(incoming("c2", f"b{n}", f"c2 #{n}"))
    first = repository.claim(worker_id="w1", limit=10, lease_seconds=30)
    assert sorted(job.conversation.channel for job in first) == ["c1", "c2"]
    assert repository.claim(worker_id="w2", limit=10, lease_seconds=30) == []
    order: dict[str, list[int]] = {"c1": [], "c2": []}
    claimed = first
    while claimed:
        for job in claimed:
            order[job.conversation.channel].append(job.message_id)
            assert repository.complete(job, reply_text="ok", reply_message_ids=["x"], token_count=1)
        claimed = repository.claim(worker_id="w1", limit=10, lease_seconds=30)
    for ids in order.values():
        assert ids == sorted(ids) and len(ids) == 3


def test_platform_filter(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1"))
    assert repository.claim(worker_id="w", limit=5, lease_seconds=30, platforms=["other"]) == []
    assert len(repository.claim(worker_id="w", limit=5, lease_seconds=30, platforms=["test"])) == 1


def test_expired_lease_is_reclaimed_and_the_dead_worker_is_fenced_off(
    repository: Repository,
) -> None:
    repository.enqueue(incoming("c1", "1"))
    (dead,) = repository.claim(worker_id="dead", limit=1, lease_seconds=30)
    assert repository.claim(worker_id="alive", limit=1, lease_seconds=30) == []
    later = utcnow() + timedelta(seconds=31)
    (alive,) = repository.claim(worker_id="alive", limit=1, lease_seconds=30, now=later)
    assert alive.id == dead.id and alive.attempt == 2
    # The first worker wakes up: it can neither renew, nor finish, nor fail the job.
    assert not repository.renew_lease(dead, lease_seconds=30)
    assert not repository.complete(dead, reply_text="late", reply_message_ids=[], token_count=1)
    assert not repository.fail(dead, error="late")
    assert repository.complete(alive, reply_text="on time", reply_message_ids=["r"], token_count=2)
    texts = [m.text for m in repository.messages(alive.conversation)]
    assert texts == ["hello", "on time"]


def test_retry_later_keeps_the_job_out_until_its_time_and_blocks_the_conversation(
    repository: Repository,
) -> None:
    repository.enqueue(incoming("c1", "1", "first"))
    repository.enqueue(incoming("c1", "2", "second"))
    (job,) = repository.claim(worker_id="w", limit=5, lease_seconds=30)
    assert repository.retry_later(job, error="platform down", delay_seconds=60, reply_text="draft")
    # The retried job is not due yet, and the next message of its conversation must wait behind it.
    assert repository.claim(worker_id="w", limit=5, lease_seconds=30) == []
    due = utcnow() + timedelta(seconds=61)
    (again,) = repository.claim(worker_id="w", limit=5, lease_seconds=30, now=due)
    assert again.id == job.id and again.reply_text == "draft" and again.attempt == 2
    assert repository.job(job.id).error == "platform down"  # type: ignore[union-attr]


def test_release_does_not_count_an_attempt(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1"))
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=30)
    assert repository.release(job)
    (again,) = repository.claim(worker_id="w", limit=1, lease_seconds=30)
    assert again.attempt == 1


def test_fail_stores_the_error(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1"))
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=30)
    assert repository.fail(job, error="gave up")
    record = repository.job(job.id)
    assert record is not None and record.status is JobStatus.FAILED and record.error == "gave up"
    assert repository.count_jobs() == 0


def test_requeue_expired_recovers_a_crashed_process(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1"))
    repository.claim(worker_id="crashed", limit=1, lease_seconds=1)
    assert repository.requeue_expired(now=utcnow() + timedelta(seconds=2)) == 1
    (job,) = repository.jobs()
    assert job.status is JobStatus.QUEUED and job.worker_id is None


def test_history_puts_each_reply_after_its_question(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1", "q1"))
    repository.enqueue(incoming("c1", "2", "q2"))  # arrives while q1 is being answered
    (job1,) = repository.claim(worker_id="w", limit=5, lease_seconds=30)
    repository.complete(job1, reply_text="a1", reply_message_ids=["r1"], token_count=1)
    (job2,) = repository.claim(worker_id="w", limit=5, lease_seconds=30)
    history = repository.history(job2.conversation_id, up_to_message_id=job2.message_id, limit=10)
    assert [m.text for m in history] == ["q1", "a1", "q2"]
    repository.complete(job2, reply_text="a2", reply_message_ids=["r2"], token_count=1)
    newest = repository.history(job2.conversation_id, up_to_message_id=job2.message_id, limit=2)
    assert [m.text for m in newest] == ["a1", "q2"]


def test_reply_progress_is_saved_for_the_next_attempt(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1"))
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=1)
    assert repository.record_reply_progress(job, reply_message_ids=["p1"])
    (again,) = repository.claim(
        worker_id="w2", limit=1, lease_seconds=30, now=utcnow() + timedelta(seconds=2)
    )
    assert again.reply_message_ids == ("p1",)


def test_channel_config_round_trip(repository: Repository) -> None:
    assert repository.channel_config(platform="test", workspace="", channel="c1") == ChannelConfig()
    config = ChannelConfig(system_prompt="Talk like a pirate.", enabled=False)
    repository.set_channel_config(platform="test", workspace="", channel="c1", config=config)
    assert repository.channel_config(platform="test", workspace="", channel="c1") == config


def test_concurrent_claims_never_hand_out_a_job_twice(repository: Repository) -> None:
    """Six workers on their own connections race for 120 jobs in 40 conversations."""
    for n in range(120):
        repository.enqueue(incoming(f"c{n % 40}", str(n)))
    claims: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(worker: str) -> None:
        try:
            while True:
                jobs = repository.claim(worker_id=worker, limit=3, lease_seconds=60)
                if not jobs:
                    if repository.count_jobs() == 0:
                        return
                    continue
                with lock:
                    claims.update(job.id for job in jobs)
                for job in jobs:
                    assert repository.complete(
                        job, reply_text="ok", reply_message_ids=[], token_count=1
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(claims) == 120 and set(claims.values()) == {1}
    assert {job.status for job in repository.jobs()} == {JobStatus.DONE}


@pytest.mark.postgres
def test_postgres_works_by_url_alone(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql")
    repo = Repository.open(postgres_url)
    assert repo.dialect == "postgresql"
    with repo.engine.connect() as connection:
        assert connection.execute(text("select 1")).scalar() == 1
    repo.close()


def test_forget_channel_deletes_its_turns_threads_and_jobs_only(repository: Repository) -> None:
    repository.enqueue(incoming("c1", "1", "secret"))
    repository.enqueue(incoming("c1", "2", "in a thread", thread="t1"))
    repository.enqueue(incoming("c2", "3", "keep me"))
    (job,) = [
        j
        for j in repository.claim(worker_id="w", limit=5, lease_seconds=30)
        if j.conversation.channel == "c1" and not j.conversation.thread
    ]
    repository.complete(job, reply_text="answer", reply_message_ids=["r"], token_count=1)
    assert repository.forget_channel(platform="test", workspace="", channel="c1") == 3
    assert repository.messages(ConversationKey(platform="test", channel="c1")) == []
    assert repository.messages(ConversationKey(platform="test", channel="c1", thread="t1")) == []
    assert [
        m.text for m in repository.messages(ConversationKey(platform="test", channel="c2"))
    ] == ["keep me"]
    assert all(j.conversation_id != job.conversation_id for j in repository.jobs())
    # The same event id can be used again afterwards (its dedupe key went with the job).
    assert repository.enqueue(incoming("c1", "1", "again")).created  # type: ignore[union-attr]
