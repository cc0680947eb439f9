"""One rating per person and answer, the latest (issue 13, item 18, storage part): a 👎 after a
👍 replaces it, whatever the order of adds and removals, under concurrency, and migration 0008
keeps only each person's latest row, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect

from bot.records import Rating
from storage import database
from storage.repository import Repository
from tests.core.test_feedback import answered

USERS = ("U1", "U2", "U3")
OPS = st.lists(
    st.tuples(st.sampled_from(("add", "remove")), st.sampled_from(USERS), st.sampled_from(Rating)),
    max_size=15,
)


def rate(
    repository: Repository, part: str, user: str, rating: Rating, now: datetime | None = None
) -> int:
    job = repository.add_feedback(
        platform="slack", workspace="T1", message_id=part, user_id=user, rating=rating, now=now
    )
    assert job is not None
    return job


def test_a_new_rating_replaces_the_old_one_and_a_repeat_changes_nothing(
    repository: Repository,
) -> None:
    job = answered(repository, channel="C1", question="q", reply="a", parts=("p1", "p2"))
    start = datetime(2026, 12, 1, 10, tzinfo=UTC)
    rate(repository, "p1", "U7", Rating.UP, now=start)
    rate(repository, "p2", "U7", Rating.DOWN, now=start + timedelta(seconds=5))
    rate(repository, "p2", "U7", Rating.DOWN, now=start + timedelta(seconds=9))  # redelivered
    (only,) = repository.feedback_for(job)
    assert (only.user_id, only.rating, only.platform_message_id) == ("U7", Rating.DOWN, "p2")
    assert only.created_at == start + timedelta(seconds=5)
    (channel,) = repository.feedback_report().channels
    assert (channel.up, channel.down) == (0, 1)
    # Taking back the 👍 that was replaced leaves the 👎; taking back the 👎 leaves nothing.
    repository.remove_feedback(
        platform="slack", workspace="T1", message_id="p1", user_id="U7", rating=Rating.UP
    )
    assert [f.rating for f in repository.feedback_for(job)] == [Rating.DOWN]
    repository.remove_feedback(
        platform="slack", workspace="T1", message_id="p2", user_id="U7", rating=Rating.DOWN
    )
    assert repository.feedback_for(job) == []


_replies = itertools.count()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_any_sequence_of_reactions_leaves_each_persons_latest_rating(
    repository: Repository, ops: list[tuple[str, str, Rating]]
) -> None:
    part = f"r{next(_replies)}"
    job = answered(repository, channel="C1", question="q", reply="a", parts=(part,))
    expected: dict[str, Rating] = {}
    for kind, user, rating in ops:
        if kind == "add":
            rate(repository, part, user, rating)
            expected[user] = rating
        else:
            repository.remove_feedback(
                platform="slack", workspace="T1", message_id=part, user_id=user, rating=rating
            )
            if expected.get(user) is rating:
                del expected[user]
    stored = repository.feedback_for(job)
    assert Counter(f.user_id for f in stored) == Counter(list(expected))  # one row at most
    assert {f.user_id: f.rating for f in stored} == expected


def test_concurrent_ratings_by_one_person_leave_one_row(repository: Repository) -> None:
    job = answered(repository, channel="C1", question="q", reply="a", parts=("p1",))
    barrier = threading.Barrier(24)
    errors: list[BaseException] = []

    def react(n: int) -> None:
        try:
            barrier.wait()
            rate(repository, "p1", "U7", Rating.UP if n % 2 else Rating.DOWN)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=react, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert [f.user_id for f in repository.feedback_for(job)] == ["U7"]


def test_migration_0008_keeps_each_persons_latest_rating_and_goes_down(
    database_url: str,
) -> None:
    engine = database.create_db_engine(database_url)
    try:
        # Replies stored by today's code (it needs today's schema), then the schema taken to 0007.
        database.upgrade(engine)
        repository = Repository(engine)
        job = answered(repository, channel="C1", question="q", reply="a", parts=("p1",))
        other = answered(repository, channel="C2", question="q", reply="a", parts=("p2",))
        database.downgrade(engine, "0007")
        rows = [
            (job, "U7", "up", "2026-12-01 10:00:00"),
            (job, "U7", "down", "2026-12-01 10:05:00"),  # U7's latest on job
            (job, "U8", "down", "2026-12-01 09:00:00"),
            (job, "U8", "up", "2026-12-01 09:00:00"),  # same time: the later row wins
            (other, "U7", "up", "2026-12-01 08:00:00"),  # another reply: kept
        ]
        with engine.begin() as connection:
            for job_id, user, rating, at in rows:
                connection.exec_driver_sql(
                    "INSERT INTO feedback (job_id, user_id, rating, platform_message_id, created_at)"
                    f" VALUES ({job_id}, '{user}', '{rating}', 'p', '{at}')"
                )
        database.upgrade(engine)
        assert {(f.user_id, f.rating) for f in repository.feedback_for(job)} == {
            ("U7", Rating.DOWN),
            ("U8", Rating.UP),
        }
        assert [(f.user_id, f.rating) for f in repository.feedback_for(other)] == [
            ("U7", Rating.UP)
        ]
        uniques = {
            u["name"]: u["column_names"] for u in inspect(engine).get_unique_constraints("feedback")
        }
        assert uniques == {"uq_feedback_rater": ["job_id", "user_id"]}

        database.downgrade(engine, "0007")
        uniques = {
            u["name"]: u["column_names"] for u in inspect(engine).get_unique_constraints("feedback")
        }
        assert uniques == {"uq_feedback_vote": ["job_id", "user_id", "rating"]}
        assert len(repository.feedback_for(job)) == 2  # the rows stay
        database.upgrade(engine)
    finally:
        engine.dispose()
