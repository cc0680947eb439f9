"""Every handoff cancels the conversation's waiting questions (``cancel_unstarted_jobs``, called
by ``Repository.enqueue`` with ``handoff``): the keyword, a "Talk to a human" button
(``Intake.ask_for_human``) and the implicit handoff of an auto-answered thread all behave the
same. Questions of that conversation that no worker has started are cancelled (never answered,
their turns kept in the history); a reply being written, or retried after an attempt, finishes;
other conversations are untouched. A worker's claim racing the handoff gets a job or leaves it
cancelled, never both. Through the real Intake and Repository, on SQLite and PostgreSQL; the
Slack path is tested end to end in tests/platforms/test_handoff_cancels_waiting_slack.py."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.fake import FakeAdapter
from bot.auto_answer import Route
from bot.delivery import ReplyTarget
from bot.intake import Intake
from bot.records import AnswerMode, ConversationKey, Incoming, JobStatus, Role
from storage.repository import Repository

KEYWORD = "talk to a human"
CHANNEL = {"platform": "slack", "workspace": "T1", "channel": "C1"}
ASKER, AGENT = "U0ASKER", "U0AGENT"
RACES = itertools.count()


class HandingOffAdapter(FakeAdapter):
    """The shipped fake adapter, plus the optional ``HandoffNotifier`` part of the contract."""

    def __init__(self, *, platform: str) -> None:
        super().__init__(platform=platform)
        self.handoffs: list[ReplyTarget] = []

    async def post_handoff(self, target: ReplyTarget) -> None:
        self.handoffs.append(target)

    async def ping_support(self, target: ReplyTarget, text: str) -> None:
        self.handoffs.append(target)


def message(ts: str, *, thread: str = "1.0", author: str = ASKER, text: str = "") -> Incoming:
    return Incoming(
        **CHANNEL,
        thread=thread,
        author_id=author,
        text=text or f"question {ts}",
        message_id=ts,
        reply_target={"channel": "C1", "thread_ts": thread or ts},
    )


def by_message(repository: Repository) -> dict[str, tuple[JobStatus, int]]:
    """Each job's (status, attempts), by the message id of its question."""
    return {
        job.dedupe_key.rsplit(":", 1)[1]: (job.status, job.attempts) for job in repository.jobs()
    }


def thread_key(thread: str = "1.0") -> ConversationKey:
    return message("x", thread=thread).conversation


async def keyword(intake: Intake) -> None:
    result = await intake.submit(message("1.9", text=f"please, {KEYWORD}!"))
    assert result is not None and result.created and result.handoff and result.cancelled == 2


async def button(intake: Intake) -> None:
    result = await intake.ask_for_human(message("1.9", text="(the button)"))
    assert result is not None and result.created and result.handoff and result.cancelled == 2


async def implicit(intake: Intake) -> None:
    """Someone other than the asker writes in an auto-answered thread."""
    route = await intake.unaddressed(
        message("1.9", author=AGENT, text="I'll take it"), top_level=False
    )
    assert route is Route.HANDED_OFF


@pytest.mark.parametrize("hand_off", [keyword, button, implicit], ids=lambda f: f.__name__)
async def test_every_handoff_cancels_the_questions_no_worker_started_and_only_those(
    repository: Repository, hand_off: Callable[[Intake], Awaitable[None]]
) -> None:
    repository.update_channel_config(**CHANNEL, changes={"answer_mode": AnswerMode.AUTO})
    adapter = HandingOffAdapter(platform="slack")
    intake = Intake(repository, handoff_keywords=(KEYWORD,))
    intake.register(adapter)
    for ts in ("1.0", "1.1", "1.2", "1.3"):  # four questions in the thread, in order
        assert await intake.submit(message(ts)) is not None
    assert await intake.submit(message("2.0", thread="2.0")) is not None  # another thread
    assert await intake.submit(message("3.0", thread="")) is not None  # the channel itself
    # A worker is writing the answer to 1.0; 1.1 was tried once and waits for its retry.
    (writing,) = repository.claim(worker_id="w", limit=1, lease_seconds=60)
    assert by_message(repository)["1.0"] == (JobStatus.RUNNING, 1)
    assert repository.complete(
        writing, reply_text="first answer", reply_message_ids=["a1"], token_count=2
    )
    # (The next claim also starts the other two conversations' questions: they are written.)
    [tried] = [
        job
        for job in repository.claim(worker_id="w", limit=3, lease_seconds=60)
        if job.conversation.thread == "1.0"
    ]
    assert repository.retry_later(tried, error="delivery failed", delay_seconds=0)
    await hand_off(intake)

    jobs = by_message(repository)
    assert jobs["1.0"] == (JobStatus.DONE, 1)
    assert jobs["1.1"] == (JobStatus.QUEUED, 1)  # retried after an attempt: it finishes
    assert jobs["1.2"][0] is JobStatus.CANCELLED and jobs["1.3"][0] is JobStatus.CANCELLED
    assert jobs["1.9"][0] is JobStatus.CANCELLED  # the handoff's own turn
    assert jobs["2.0"][0] is not JobStatus.CANCELLED and jobs["3.0"][0] is not JobStatus.CANCELLED
    # Nothing lost from the history: every question of the thread is still there, in order.
    turns = [(m.role, m.text) for m in repository.messages(thread_key())]
    assert [text for role, text in turns if role is Role.USER][:4] == [
        f"question {ts}" for ts in ("1.0", "1.1", "1.2", "1.3")
    ]
    assert (Role.ASSISTANT, "first answer") in turns
    # The cancelled questions are never claimed; the retried one is, and can finish.
    claimed = repository.claim(worker_id="w2", limit=10, lease_seconds=60)
    assert {job.conversation.thread for job in claimed} <= {"1.0", "2.0", ""}
    [retry] = [job for job in claimed if job.conversation.thread == "1.0"]
    assert repository.complete(retry, reply_text="second", reply_message_ids=["a2"], token_count=1)
    assert repository.jobs(status=JobStatus.QUEUED) == []


async def test_a_redelivered_handoff_cancels_nothing_more(repository: Repository) -> None:
    adapter = HandingOffAdapter(platform="slack")
    intake = Intake(repository, handoff_keywords=(KEYWORD,))
    intake.register(adapter)
    assert await intake.submit(message("1.0")) is not None
    first = await intake.submit(message("1.1", text=KEYWORD))
    assert first is not None and first.cancelled == 1
    again = await intake.submit(message("1.1", text=KEYWORD))
    assert again is not None and not again.created and again.cancelled == 0
    assert len(adapter.handoffs) == 1


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(questions=st.integers(1, 6), workers=st.integers(1, 3))
def test_a_claim_racing_a_handoff_takes_a_job_or_leaves_it_cancelled_never_both(
    repository: Repository, questions: int, workers: int
) -> None:
    thread = f"race{next(RACES)}"
    for n in range(questions):
        assert repository.enqueue(message(f"{thread}-{n}", thread=thread)) is not None
    claimed: list[int] = []
    start = threading.Barrier(workers + 1)

    def work(name: str) -> None:
        start.wait()
        for _ in range(3):
            for job in repository.claim(worker_id=name, limit=questions, lease_seconds=60):
                claimed.append(job.id)
                repository.retry_later(job, error="busy", delay_seconds=0)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(workers)]
    for worker in threads:
        worker.start()
    start.wait()
    handoff = repository.enqueue(message(f"{thread}-h", thread=thread, text=KEYWORD), handoff=True)
    for worker in threads:
        worker.join()
    assert handoff is not None and handoff.handoff
    mine = [
        job
        for job in repository.jobs()
        if job.dedupe_key.rsplit(":", 1)[1].startswith(f"{thread}-")
        and not job.dedupe_key.endswith("-h")
    ]
    cancelled = {job.id for job in mine if job.status is JobStatus.CANCELLED}
    assert handoff.cancelled == len(cancelled)
    assert not cancelled & set(claimed)  # claimed and cancelled: never both
    assert all(job.attempts == 0 for job in mine if job.status is JobStatus.CANCELLED)
    assert {job.id for job in mine} - cancelled <= set(claimed)  # the rest were started
