"""A reply whose delivery fails is delivered later exactly as the first attempt would have posted
it: the lines about the question's attached files and the shortened-question notice are kept
with the generated text (``jobs.reply_notice``, migration 0017) and posted once,
whichever write fails. The stored assistant turn stays the generated text alone. Through the
real intake, queue (SQLite and PostgreSQL) and worker, the shipped FakeEngine and a FakeAdapter
whose writes fail where a test says."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from adapters.fake import FakeAdapter
from bot import texts
from bot.errors import DeliveryError
from bot.generation.fake import FakeEngine
from bot.records import (
    Attachment,
    AttachmentProblem,
    ChannelConfig,
    ConversationKey,
    Incoming,
    JobStatus,
    KnowledgeMode,
    Rating,
    Role,
)
from storage import database
from storage.repository import Repository
from tests.support.rig import ServiceRig, quick_worker_options

LONG_QUESTION = "please read my log " + "x" * 1000  # longer than the prompt's room: shortened
NOTE = texts.ATTACHMENT_UNREADABLE.format(name="`crash.pdf`")


class FlakyAdapter(FakeAdapter):
    """The shipped fake adapter whose writes (posts, edits, notices; counted from 0 over the
    whole run) numbered in ``failing`` raise a DeliveryError."""

    def __init__(self) -> None:
        super().__init__(platform="fake")
        self.failing: set[int] = set()
        self.writes = 0

    def check_fault(self) -> None:
        number = self.writes
        self.writes += 1
        if number in self.failing:
            raise DeliveryError("injected outage", retry_after=0.01)
        super().check_fault()


class Rig(ServiceRig[FlakyAdapter, FakeEngine]):
    pass


async def start(database_url: str) -> Rig:
    return await Rig.start(
        FlakyAdapter(),
        repository=Repository.open(database_url),
        engine=FakeEngine(context_window=400),
        options=quick_worker_options(max_new_tokens=100, max_attempts=8),
    )


def question(channel: str, *, text: str, files: bool) -> Incoming:
    broken = Attachment(name="crash.pdf", problem=AttachmentProblem.UNREADABLE)
    return Incoming(
        platform="fake",
        channel=channel,
        author_id="user",
        text=text,
        message_id=f"{channel}-1",
        attachments=(broken,) if files else (),
    )


async def ask(
    rig: Rig, channel: str, *, text: str, files: bool, strict: bool = False
) -> tuple[str, str]:
    """The reply's final text and the assistant turn stored for it. ``strict``: the channel
    answers only from an (empty) knowledge base: "I don't know", without the engine."""
    if strict:
        rig.repository.set_channel_config(
            platform="fake",
            workspace="",
            channel=channel,
            config=ChannelConfig(kb_collections=("docs",), kb_mode=KnowledgeMode.STRICT),
        )
    result = await rig.intake.submit(question(channel, text=text, files=files))
    assert result is not None and result.created
    await rig.until(lambda: rig.pending() == 0)
    job = rig.repository.job(result.job_id)
    assert job is not None and job.status is JobStatus.DONE, job
    [reply] = rig.adapter.replies(channel)
    stored = rig.repository.messages(ConversationKey(platform="fake", channel=channel))
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]
    return reply, stored[1].text


@pytest.mark.parametrize(
    ("text", "files", "strict", "opening"),
    [
        (LONG_QUESTION, True, False, f"{NOTE}\n\n{texts.TRUNCATED_NOTICE}\n\n"),
        ("what does this mean?", True, False, f"{NOTE}\n\n"),
        (LONG_QUESTION, False, False, f"{texts.TRUNCATED_NOTICE}\n\n"),
        ("what is the capital of Australia?", True, True, f"{NOTE}\n\n"),
    ],
    ids=["notes-and-truncation", "notes", "truncation", "notes-strict-dont-know"],
)
async def test_whichever_write_fails_the_retry_posts_what_the_first_attempt_would_have(
    database_url: str, text: str, files: bool, strict: bool, opening: str
) -> None:
    rig = await start(database_url)
    try:
        expected, turn = await ask(rig, "clean", text=text, files=files, strict=strict)
        assert expected.startswith(opening) and expected.count(opening) == 1
        assert turn == expected.removeprefix(opening)  # the turn is the generated text alone
        writes = rig.adapter.writes
        # Every write of a delivery fails in turn (alone, and with the next one), the final
        # one included (the reply generated, only its delivery left for a later attempt).
        patterns = [{n} for n in range(writes)] + [{n, n + 1} for n in range(writes)]
        for number, pattern in enumerate(patterns):
            channel = f"flaky-{number}"
            rig.adapter.failing = {rig.adapter.writes + n for n in pattern}
            reply, stored = await ask(rig, channel, text=text, files=files, strict=strict)
            assert (reply, stored) == (expected, turn), pattern
        # Never generated twice (a strict channel's "I don't know" never asks the engine).
        assert len(rig.engine.requests) == (0 if strict else 1 + len(patterns))
        retried = [j for j in rig.repository.jobs() if j.attempts > 1]
        assert len(retried) == len(patterns)
    finally:
        await rig.worker.stop(drain_seconds=1)
        await rig.task
        rig.repository.close()


def test_migration_0017_adds_and_removes_the_reply_notice(database_url: str) -> None:
    engine = database.create_db_engine(database_url)
    try:
        database.upgrade(engine)
        repository = Repository(engine)
        assert repository.enqueue(question("c", text="hi", files=False)) is not None
        [answered] = repository.claim(worker_id="w", limit=1, lease_seconds=5)
        assert repository.complete(
            answered, reply_text="hello", reply_message_ids=["p1"], token_count=1
        )
        rated = repository.add_feedback(
            platform="fake",
            workspace="",
            channel="c",
            message_id="p1",
            user_id="u",
            rating=Rating.UP,
        )
        assert rated == answered.id
        assert repository.enqueue(question("d", text="hi", files=False)) is not None
        database.downgrade(engine, "0016")
        assert "reply_notice" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        # Dropped in place: the rows pointing at jobs stay (no table rebuild cascading into them).
        assert [f.rating for f in repository.feedback_for(answered.id)] == [Rating.UP]
        assert repository.count_jobs() == 1
        database.upgrade(engine)
        assert database.current_revision(engine) == "0017"
        [claimed] = repository.claim(worker_id="w", limit=1, lease_seconds=5)
        assert claimed.reply_notice == ""
        assert repository.retry_later(
            claimed, error="x", delay_seconds=0, reply_text="answer", reply_notice="note\n\n"
        )
        [again] = repository.claim(worker_id="w", limit=1, lease_seconds=5)
        assert (again.reply_text, again.reply_notice) == ("answer", "note\n\n")
    finally:
        engine.dispose()
