"""The per-channel queue limit holds under real concurrency (issue 13, item 7): the count and the
insert are one transaction, so 100 messages arriving at once in a channel with a limit of 20
leave exactly 20 jobs, on SQLite and PostgreSQL, through the intake and straight at the
repository from many threads and two engines (as two processes would)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from adapters.fake import FakeAdapter
from bot import texts
from bot.intake import Intake
from bot.limits import Limits, LimitSettings
from bot.records import EnqueueResult, Incoming
from storage.repository import Repository

LIMIT = 20
MESSAGES = 100


def question(n: int, *, channel: str = "busy", thread: str = "") -> Incoming:
    return Incoming(
        platform="fake",
        workspace="w",
        channel=channel,
        thread=thread,
        author_id=f"u{n}",
        text=f"question {n}",
        message_id=f"m{n}",
    )


async def test_concurrent_submissions_through_the_intake_accept_exactly_the_limit(
    database_url: str,
) -> None:
    repository = Repository.open(database_url)
    try:
        limits = Limits(
            LimitSettings(
                user_rate_per_minute=0, channel_rate_per_minute=0, channel_queue_limit=LIMIT
            )
        )
        intake = Intake(repository, limits=limits)
        adapter = FakeAdapter(platform="fake")
        intake.register(adapter)
        # Threads as well as tasks: every submission runs its enqueue in a worker thread.
        results = await asyncio.gather(
            *(intake.submit(question(n, thread=f"t{n % 7}")) for n in range(MESSAGES))
        )
        outcome = Counter(
            "created" if r is not None and r.created else (r.refused if r else None)
            for r in results
        )
        assert outcome == {"created": LIMIT, "queue_full": MESSAGES - LIMIT}
        assert (
            repository.pending_in_channel(platform="fake", workspace="w", channel="busy") == LIMIT
        )
        stored = repository.transcript(platform="fake", workspace="w", channel="busy")
        assert len(stored) == LIMIT  # a refused message leaves nothing behind
        notice = texts.LIMIT_QUEUE_FULL.format(limit=LIMIT)
        assert [text for _, text in adapter.notices] == [notice] * (MESSAGES - LIMIT)
        # A redelivery of a refused message is not told twice; of an accepted one, not refused.
        refused_one = next(n for n, r in enumerate(results) if r is not None and not r.created)
        again = await intake.submit(question(refused_one, thread=f"t{refused_one % 7}"))
        assert again is not None and again.refused == "queue_full"
        assert len(adapter.notices) == MESSAGES - LIMIT
        accepted_one = next(n for n, r in enumerate(results) if r is not None and r.created)
        seen = await intake.submit(question(accepted_one, thread=f"t{accepted_one % 7}"))
        assert seen is not None and not seen.created and seen.refused is None
        # Other channels are not affected.
        elsewhere = await intake.submit(question(999, channel="quiet"))
        assert elsewhere is not None and elsewhere.created
    finally:
        repository.close()


def test_a_hundred_threads_on_two_engines_never_exceed_the_limit(database_url: str) -> None:
    repositories = [Repository.open(database_url), Repository.open(database_url, migrate=False)]
    try:
        barrier = threading.Barrier(MESSAGES)
        results: list[EnqueueResult | None] = [None] * MESSAGES
        errors: list[BaseException] = []

        def submit(n: int) -> None:
            try:
                barrier.wait()
                results[n] = repositories[n % 2].enqueue(question(n), channel_queue_limit=LIMIT)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(MESSAGES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        created = [r for r in results if r is not None and r.created]
        refused = [r for r in results if r is not None and r.refused == "queue_full"]
        assert len(created) == LIMIT and len(refused) == MESSAGES - LIMIT
        assert all(r.job_id == 0 and r.message_id == 0 for r in refused)
        assert len({r.job_id for r in created}) == LIMIT
        pending = repositories[0].pending_in_channel(platform="fake", workspace="w", channel="busy")
        assert pending == LIMIT
        # A finished job makes room for exactly one more.
        (job,) = repositories[0].claim(worker_id="w", limit=1, lease_seconds=30)
        repositories[0].complete(job, reply_text="a", reply_message_ids=["r"], token_count=1)
        room = repositories[1].enqueue(question(MESSAGES), channel_queue_limit=LIMIT)
        full = repositories[1].enqueue(question(MESSAGES + 1), channel_queue_limit=LIMIT)
        assert room is not None and room.created
        assert full is not None and full.refused == "queue_full"
    finally:
        for repository in repositories:
            repository.close()
