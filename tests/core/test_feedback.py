"""Feedback (issue 7): 👍/👎 on replies stored against the reply's job (SQLite and PostgreSQL),
migration 0004 up and down, deletion requests, and ``solarbot report`` as a user runs it. The
platforms' reaction events are tested end to end in tests/platforms/test_slack.py and tests/platforms/test_discord.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect

from bot.intake import rating_of
from bot.records import Incoming, Rating
from storage import database
from storage.repository import Repository
from tests.support.processes import solarbot


def answered(
    repository: Repository,
    *,
    channel: str,
    question: str,
    reply: str,
    parts: tuple[str, ...],
    thread: str = "",
    platform: str = "slack",
    author: str = "U1",
) -> int:
    """A question and its delivered reply (posted as the messages ``parts``); the job id."""
    result = repository.enqueue(
        Incoming(
            platform=platform,
            workspace="T1",
            channel=channel,
            thread=thread,
            author_id=author,
            text=question,
            message_id=f"q-{parts[0]}",
        )
    )
    assert result is not None
    (job,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert repository.complete(job, reply_text=reply, reply_message_ids=parts, token_count=1)
    return job.id


def vote(
    repository: Repository, message: str, user: str, rating: Rating, **where: str
) -> int | None:
    return repository.add_feedback(
        platform=where.get("platform", "slack"),
        workspace="T1",
        channel=where.get("channel"),
        message_id=message,
        user_id=user,
        rating=rating,
    )


@pytest.mark.parametrize(
    ("emoji", "rating"),
    [
        ("👍", Rating.UP),
        ("👍🏿", Rating.UP),
        ("+1", Rating.UP),
        ("+1::skin-tone-2", Rating.UP),
        ("thumbsup", Rating.UP),
        ("👎", Rating.DOWN),
        ("-1", Rating.DOWN),
        ("thumbsdown", Rating.DOWN),
        ("🎉", None),
        ("tada", None),
        ("", None),
    ],
)
def test_rating_of(emoji: str, rating: Rating | None) -> None:
    assert rating_of(emoji) is rating


def test_feedback_finds_the_reply_by_any_part_and_is_idempotent(repository: Repository) -> None:
    job = answered(repository, channel="C1", question="q", reply="a", parts=("p1", "p2"))
    assert vote(repository, "p1", "U7", Rating.UP) == job
    assert vote(repository, "p1", "U7", Rating.UP) == job  # a redelivered event: stored once
    assert vote(repository, "p2", "U8", Rating.DOWN, channel="C1") == job
    assert vote(repository, "p2", "U8", Rating.DOWN, channel="C2") is None  # wrong channel
    assert vote(repository, "q-p1", "U7", Rating.DOWN) is None  # the question is no reply
    assert vote(repository, "p1", "U7", Rating.UP, platform="discord") is None
    records = repository.feedback_for(job)
    assert [(r.user_id, r.rating, r.platform_message_id) for r in records] == [
        ("U7", Rating.UP, "p1"),
        ("U8", Rating.DOWN, "p2"),
    ]
    assert all(r.created_at <= datetime.now(UTC) for r in records)

    removed = repository.remove_feedback(
        platform="slack", workspace="T1", message_id="p1", user_id="U7", rating=Rating.UP
    )
    assert removed == job
    assert [r.user_id for r in repository.feedback_for(job)] == ["U8"]


def test_report_counts_per_channel_and_lists_the_worst_answers(repository: Repository) -> None:
    good = answered(repository, channel="C1", question="good q", reply="good a", parts=("g",))
    bad = answered(
        repository, channel="C1", thread="9.1", question="bad q " * 40, reply="bad a", parts=("b",)
    )
    meh = answered(repository, channel="C2", question="meh q", reply="meh a", parts=("m",))
    answered(repository, channel="D1", question="hi", reply="hey", parts=("d",), platform="discord")
    vote(repository, "g", "U1", Rating.UP)
    vote(repository, "g", "U2", Rating.UP)
    for user in ("U1", "U2", "U3"):
        vote(repository, "b", user, Rating.DOWN)
    vote(repository, "m", "U1", Rating.DOWN)
    vote(repository, "m", "U2", Rating.UP)

    report = repository.feedback_report(platform="slack", limit=5)
    assert [(c.channel, c.replies, c.up, c.down) for c in report.channels] == [
        ("C1", 2, 2, 3),  # the thread counts with its channel
        ("C2", 1, 1, 1),
    ]
    assert [(r.job_id, r.down, r.up) for r in report.worst] == [(bad, 3, 0), (meh, 1, 1)]
    assert good not in [r.job_id for r in report.worst]  # no 👎: not among the worst
    assert report.worst[0].answer == "bad a"
    assert (
        report.worst[0].question.startswith("bad q bad q") and len(report.worst[0].question) == 120
    )
    assert [c.platform for c in repository.feedback_report().channels] == [
        "discord",
        "slack",
        "slack",
    ]
    assert len(repository.feedback_report(limit=1).worst) == 1


def test_deletion_requests_take_the_feedback_with_them(repository: Repository) -> None:
    first = answered(
        repository, channel="C1", question="q1", reply="a1", parts=("p1",), author="U1"
    )
    second = answered(
        repository, channel="C1", question="q2", reply="a2", parts=("p2",), author="U2"
    )
    vote(repository, "p1", "U9", Rating.UP)
    vote(repository, "p2", "U9", Rating.DOWN)
    vote(repository, "p2", "U1", Rating.UP)
    # U1 asks to be forgotten: their question (with its reply and feedback) and their reactions.
    assert repository.forget_user(platform="slack", workspace=None, author_id="U1") == 1
    assert repository.feedback_for(first) == []
    assert [(r.user_id, r.rating) for r in repository.feedback_for(second)] == [("U9", Rating.DOWN)]
    repository.forget_channel(platform="slack", workspace="T1", channel="C1")
    assert repository.feedback_for(second) == []
    assert repository.feedback_report().channels == ()


def test_migration_0004_adds_feedback_and_goes_down(database_url: str) -> None:
    engine = database.create_db_engine(database_url)
    try:
        # A reply from before the upgrade: stored by this code, then migrated down to 0003.
        database.upgrade(engine)
        repository = Repository(engine)
        job = answered(repository, channel="C1", question="q", reply="a", parts=("p1",))
        database.downgrade(engine, "0003")
        assert "feedback" not in inspect(engine).get_table_names()

        database.upgrade(engine, revision="0004")
        assert database.current_revision(engine) == "0004"
        indexes = {i["name"] for i in inspect(engine).get_indexes("messages")}
        assert "ix_messages_platform_message_id" in indexes
        database.upgrade(engine)  # this code rates through the unique key of migration 0008
        assert vote(repository, "p1", "U7", Rating.DOWN) == job  # a reply from before the upgrade

        database.downgrade(engine, "0003")
        assert "feedback" not in inspect(engine).get_table_names()
        indexes = {i["name"] for i in inspect(engine).get_indexes("messages")}
        assert "ix_messages_platform_message_id" not in indexes
        assert repository.job(job) is not None  # the replies stay
        database.upgrade(engine)
        assert repository.feedback_for(job) == []
    finally:
        engine.dispose()


def test_cli_report(tmp_path: Path) -> None:
    repository = Repository.open(f"sqlite:///{tmp_path / 'solarbot.db'}")
    bad = answered(
        repository, channel="C1", question="why is the sky green?", reply="It is.", parts=("b",)
    )
    answered(repository, channel="D1", question="hi", reply="hey", parts=("d",), platform="discord")
    vote(repository, "b", "U1", Rating.DOWN)
    vote(repository, "b", "U2", Rating.DOWN)
    vote(repository, "b", "U3", Rating.UP)
    repository.close()
    env = {"SOLARBOT_DATA_DIR": str(tmp_path)}

    result = solarbot("report", "--platform", "slack", "--limit", "3", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("platform"))
    assert lines[header].split() == ["platform", "workspace", "channel", "replies", "👍", "👎"]
    assert lines[header + 1].split() == ["slack", "T1", "C1", "1", "1", "2"]
    assert "discord" not in result.stdout
    assert f"job {bad} in slack T1/C1: 👎 2, 👍 1" in result.stdout
    assert "  Q: why is the sky green?" in lines and "  A: It is." in lines

    everything = solarbot("report", env=env)
    assert ["discord", "T1", "D1", "1", "0", "0"] in [
        line.split() for line in everything.stdout.splitlines()
    ]
    refused = solarbot("report", "--limit", "0", env=env)
    assert refused.returncode == 2 and "--limit" in refused.stderr
